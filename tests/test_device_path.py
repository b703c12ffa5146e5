"""The GPU fast path's logic, on the CPU: device-resident batches (`data.device_resident`),
metrics and finite-loss checks read once per epoch (`module.defer_sync`), compile modes."""

import pytest
import torch

from pneumonia.data.datamodule import RESIDENT_FREE_FRACTION, ChestXrayDataModule, resident_on
from pneumonia.errors import ConfigError, UserError
from pneumonia.models.classifier import PneumoniaClassifier
from pneumonia.runners.callbacks import FiniteLossGuard
from pneumonia.runners.train import train
from tests.helpers import train_cfg

NET = {
    "_target_": "pneumonia.models.CustomCNN",
    "depth": 2,
    "widths": [4, 8],
    "dilated_blocks": [],
    "in_channels": 1,
    "image_size": 32,
    "dense_units": 8,
}


def make_dm(root, tmp_path, **kw):
    kw = {"image_size": 32, "batch_size": 8, "val_fraction": 0.25, "cache_dir": str(tmp_path / "cache"), **kw}
    return ChestXrayDataModule(root=str(root), **kw)


def batches(loader, epochs=(0, 1)):
    out = []
    for epoch in epochs:
        loader.batch_sampler.set_epoch(epoch) if loader.batch_sampler is not None else loader.sampler.set_epoch(epoch)
        out += [tuple(t.clone() for t in b) for b in loader]
    return out


def test_resident_decision():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    free = 8 * 2**30
    assert resident_on("auto", cuda, int(RESIDENT_FREE_FRACTION * free), free)
    assert not resident_on("auto", cuda, int(RESIDENT_FREE_FRACTION * free) + 1, free)  # does not fit
    assert not resident_on("auto", cpu, 1, None)  # auto: the CPU path stays as it was
    assert resident_on(True, cpu, 10**15, None) and resident_on(True, cuda, 10**15, 1)
    assert not resident_on(False, cuda, 1, free)


def test_device_resident_batches_equal_the_host_paths(xray_root, tmp_path):
    host, resident = make_dm(xray_root, tmp_path), make_dm(xray_root, tmp_path, device_resident=True)
    for dm in (host, resident):
        dm.setup("fit")
    assert host.resident_split("train") is None  # the default (false) keeps the host path
    moved = resident.resident_split("train")
    assert moved is not None and resident.resident_split("val").images is moved.images  # one shared copy
    for training in (True, False):
        make = (lambda dm: dm.train_dataloader()) if training else (lambda dm: dm.val_dataloader())
        a, b = batches(make(host)), batches(make(resident))
        assert len(a) == len(b) >= 2
        for x, y in zip(a, b):
            assert all(torch.equal(u, v) for u, v in zip(x, y))


def test_auto_residency_keeps_the_cpu_path(xray_root, tmp_path):
    dm = make_dm(xray_root, tmp_path, device_resident="auto")
    dm.setup("fit")
    assert dm.resident_split("train") is None


def test_bad_settings_are_config_errors(xray_root, tmp_path):
    with pytest.raises(ConfigError, match="device_resident"):
        make_dm(xray_root, tmp_path, device_resident="yes")
    with pytest.raises(ConfigError, match="^compile='fast' must be"):
        PneumoniaClassifier(net=NET, compile="fast")
    with pytest.raises(ConfigError, match="^defer_sync='sometimes' must be"):
        PneumoniaClassifier(net=NET, defer_sync="sometimes")
    for mode in (True, False, "default", "reduce-overhead", "max-autotune"):
        PneumoniaClassifier(net=NET, compile=mode)


def test_deferred_metrics_equal_per_step_metrics():
    torch.manual_seed(0)
    data = [(torch.rand(n, 1, 32, 32), torch.randint(0, 2, (n,))) for n in (8, 8, 5)]
    results = []
    for defer in (False, True):
        torch.manual_seed(1)
        module = PneumoniaClassifier(net=NET, defer_sync=defer)
        assert module.defers_sync is defer
        for x, y in data:
            module._step("train", (x, y, torch.arange(len(y))))
            module._step("val", (x, y, torch.arange(len(y))))
        updated = any(m.update_called for m in module.train_metrics.values())
        assert updated is not defer  # deferred: nothing reached the metrics during the steps
        for phase in ("train", "val"):
            module._flush(phase)
        results.append(
            {
                phase: (
                    {k: v.clone() for k, v in getattr(module, f"{phase}_metrics").compute().items()},
                    getattr(module, f"{phase}_loss").compute(),
                )
                for phase in ("train", "val")
            }
        )
    for phase in ("train", "val"):
        (m0, l0), (m1, l1) = results[0][phase], results[1][phase]
        assert m0.keys() == m1.keys() and all(torch.equal(m0[k], m1[k]) for k in m0)
        assert torch.allclose(l0, l1, rtol=1e-6)


def test_defer_sync_auto_is_off_on_the_cpu():
    assert PneumoniaClassifier(net=NET, defer_sync="auto").defers_sync is False


class _Trainer:
    checkpoint_callbacks = ()
    current_epoch = 3


class _Module:
    defers_sync = True


def test_deferred_finite_loss_guard_raises_before_validation():
    guard = FiniteLossGuard(every_n_batches=4)
    trainer, module = _Trainer(), _Module()
    guard.on_train_batch_end(trainer, module, torch.tensor(0.5), None, 0)
    guard.on_train_batch_end(trainer, module, torch.tensor(float("nan")), None, 1)  # not read yet
    with pytest.raises(UserError, match="non-finite training loss at epoch 3, from batch 0 on"):
        guard.on_validation_start(trainer, module)
    for i in range(3):
        guard.on_train_batch_end(trainer, module, torch.tensor(1.0), None, i)
    with pytest.raises(UserError, match="in batches 0 to 3"):
        guard.on_train_batch_end(trainer, module, torch.tensor(float("inf")), None, 3)
    with pytest.raises(ConfigError):
        FiniteLossGuard(every_n_batches=0)


@pytest.mark.slow
def test_fast_path_settings_train_to_the_same_validation_metrics(xray_root, tmp_path):
    reports = []
    for run, extra in (("host", ()), ("fast", ("data.device_resident=true", "module.defer_sync=true"))):
        cfg = train_cfg(
            xray_root,
            tmp_path / run,
            "trainer.max_epochs=2",
            "trainer.deterministic=true",
            "seed=5",
            "logger=none",
            *extra,
        )
        reports.append(train(cfg)[1])
    assert reports[0]["auroc"] == reports[1]["auroc"] and reports[0]["threshold"] == reports[1]["threshold"]
