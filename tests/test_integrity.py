"""Checkpoints that cannot be trusted are refused in one line: damaged weights (checksum),
missing settings, never calibrated; a full disk leaves no partial checkpoint; SIGTERM and
Ctrl-C end a training run with the resume command and a non-zero status."""

import errno
import logging
import re

import pytest
import torch

from pneumonia.errors import CheckpointError, ConfigError
from pneumonia.export.runner import export
from pneumonia.inference import Predictor
from pneumonia.inference.checkpoint import load_checkpoint
from pneumonia.integrity import DIGEST_KEY, seal, weights_digest
from pneumonia.io import DiskFullError
from pneumonia.runners.train import train
from tests.helpers import compose_cfg, run_cli, train_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def flip_weight_bytes(src, dst, n=4096):
    """`src` copied to `dst` with `n` bytes of its largest weight tensor inverted in place in
    the file (found by the tensor's own bytes in the zip archive), nothing else touched."""
    state = torch.load(src, weights_only=True)["state_dict"]
    _, tensor = max(((k, v) for k, v in state.items() if k.startswith("net.")), key=lambda kv: kv[1].numel())
    blob = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    raw = bytearray(src.read_bytes())
    at = raw.find(blob)
    assert at > 0 and raw.find(blob, at + 1) < 0
    n = min(n, len(blob))
    raw[at : at + n] = bytes(b ^ 0xFF for b in raw[at : at + n])
    dst.write_bytes(bytes(raw))
    return n


def rewrite(src, dst, change, *, reseal=True):
    """A copy of checkpoint `src` at `dst` after `change(ckpt)`; its digest recomputed or not."""
    ckpt = torch.load(src, weights_only=True)
    change(ckpt)
    if reseal:
        seal(ckpt)
    torch.save(ckpt, dst)
    return dst


def one_error_line(res, *expected):
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(e in line for e in expected), res.stderr[-3000:]
    return line


# ---- checksum of the weights ------------------------------------------------------------------------------
def test_every_checkpoint_carries_the_checksum_of_its_weights(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)  # calibrated after training: store_calibration sealed it again
    assert ckpt[DIGEST_KEY]["hexdigest"] == weights_digest(ckpt["state_dict"])
    last = load_checkpoint(tiny_checkpoint.with_name("last.ckpt"))  # written by Lightning alone
    assert last[DIGEST_KEY]["hexdigest"] == weights_digest(last["state_dict"])
    # a change of one weight, a dtype or a key changes the digest
    state = dict(ckpt["state_dict"])
    key = next(k for k in state if k.startswith("net."))
    for other in (
        {**state, key: state[key].clone().index_put_((torch.tensor(0),), torch.tensor(1.5))},
        {**state, key: state[key].double()},
        {("x" + k if k == key else k): v for k, v in state.items()},
    ):
        assert weights_digest(other) != weights_digest(state)


@pytest.mark.slow
def test_flipped_weight_bytes_are_refused_in_one_line(tiny_checkpoint, xray_root, tmp_path):
    damaged = tmp_path / "best.ckpt"
    assert flip_weight_bytes(tiny_checkpoint, damaged) >= 1024
    torch.load(damaged, weights_only=True)  # the file still loads: only the checksum tells
    with pytest.raises(CheckpointError, match=r"is damaged: its weights differ from the checksum"):
        load_checkpoint(damaged)
    # altered through torch itself, the checksum left as it was
    altered = rewrite(
        tiny_checkpoint,
        tmp_path / "altered.ckpt",
        lambda c: c["state_dict"][next(k for k in c["state_dict"] if k.endswith("weight"))].mul_(1.01),
        reseal=False,
    )
    with pytest.raises(CheckpointError, match="is damaged"):
        Predictor.from_checkpoint(altered)
    image = next((xray_root / "test" / "NORMAL").iterdir())
    one_error_line(
        run_cli(
            "predict.py", f"ckpt_path={damaged}", f"inputs={image}", "device=cpu", f"hydra.run.dir={tmp_path / 'p'}"
        ),
        str(damaged),
        "is damaged",
    )
    one_error_line(
        run_cli(
            "eval.py",
            f"ckpt_path={damaged}",
            f"data.root={xray_root}",
            "trainer.accelerator=cpu",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'e'}",
        ),
        str(damaged),
        "is damaged",
    )
    with pytest.raises(CheckpointError, match="is damaged"):
        export(compose_cfg("export", [f"ckpt_path={damaged}"], tmp_path / "x"))


def test_a_checkpoint_without_a_checksum_loads_with_one_notice(tiny_checkpoint, tmp_path, caplog):
    older = rewrite(tiny_checkpoint, tmp_path / "older.ckpt", lambda c: c.pop(DIGEST_KEY), reseal=False)
    with caplog.at_level(logging.WARNING, logger="pneumonia.inference.checkpoint"):
        Predictor.from_checkpoint(older)
        Predictor.from_checkpoint(older)
    notices = [r.getMessage() for r in caplog.records if "no weights checksum" in r.getMessage()]
    assert len(notices) == 1 and str(older) in notices[0]


# ---- checkpoints with missing settings --------------------------------------------------------------------
@pytest.mark.slow
def test_missing_settings_are_named_in_one_line(tiny_checkpoint, xray_root, tmp_path):
    cases = {
        "no_net": (lambda c: c["hyper_parameters"].pop("net"), "the network's spec (hyper_parameters 'net')"),
        "empty": (
            lambda c: c.update(hyper_parameters={}, datamodule_hyper_parameters={}),
            "the network's spec (hyper_parameters 'net'); a valid image size",
        ),
        "no_size": (lambda c: c["datamodule_hyper_parameters"].pop("image_size"), "a valid image size"),
        "no_weights": (lambda c: c.update(state_dict={"threshold": torch.tensor(0.5)}), "the network's weights"),
    }
    for name, (change, expected) in cases.items():
        path = rewrite(tiny_checkpoint, tmp_path / f"{name}.ckpt", change)
        with pytest.raises(CheckpointError, match=re.escape(expected)) as err:
            Predictor.from_checkpoint(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    bad_spec = rewrite(
        tiny_checkpoint, tmp_path / "bad_spec.ckpt", lambda c: c["hyper_parameters"]["net"].update(no_such_argument=1)
    )
    with pytest.raises(CheckpointError, match="its network spec .* cannot be built"):
        Predictor.from_checkpoint(bad_spec)
    image = next((xray_root / "test" / "NORMAL").iterdir())
    one_error_line(
        run_cli(
            "predict.py",
            f"ckpt_path={tmp_path / 'no_net.ckpt'}",
            f"inputs={image}",
            "device=cpu",
            f"hydra.run.dir={tmp_path / 'p'}",
        ),
        "no_net.ckpt",
        "hyper_parameters 'net'",
    )


# ---- never calibrated ----------------------------------------------------------------------------------
def uncalibrated(tiny_checkpoint, tmp_path):
    def forget(c):
        c.pop("pneumonia")
        c["state_dict"]["threshold"] = torch.tensor(0.5)

    return rewrite(tiny_checkpoint, tmp_path / "uncalibrated.ckpt", forget)


@pytest.mark.slow
def test_an_uncalibrated_checkpoint_is_refused_unless_a_threshold_is_given(tiny_checkpoint, xray_root, tmp_path):
    path = uncalibrated(tiny_checkpoint, tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"is not calibrated .*python -m pneumonia.tools.calibrate .*"
        r"or give threshold=",
    ):
        Predictor.from_checkpoint(path)
    assert Predictor.from_checkpoint(path, threshold=0.3).threshold == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="threshold"):
        Predictor.from_checkpoint(path, threshold=1.5)
    with pytest.raises(CheckpointError, match="is not calibrated"):
        export(compose_cfg("export", [f"ckpt_path={path}"], tmp_path / "x"))
    from pneumonia.app.service import Service

    with pytest.raises(CheckpointError, match="is not calibrated"):
        Service.from_checkpoint(path, device="cpu")
    assert Service.from_checkpoint(path, device="cpu", threshold=0.4).predictor.threshold == pytest.approx(0.4)
    image = next((xray_root / "test" / "NORMAL").iterdir())
    one_error_line(
        run_cli("predict.py", f"ckpt_path={path}", f"inputs={image}", "device=cpu", f"hydra.run.dir={tmp_path / 'p'}"),
        str(path),
        "is not calibrated",
    )
    res = run_cli(
        "predict.py",
        f"ckpt_path={path}",
        f"inputs={image}",
        "device=cpu",
        "threshold=0.5",
        f"hydra.run.dir={tmp_path / 'p2'}",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    # the command the refusal names calibrates it again: the threshold training had chosen
    from pneumonia.tools.calibrate import main

    assert main([str(path), "--accelerator", "cpu"]) == 0
    chosen = Predictor.from_checkpoint(tiny_checkpoint).threshold
    assert Predictor.from_checkpoint(path).threshold == pytest.approx(chosen)
    assert main([str(tmp_path / "missing.ckpt")]) == 2


# ---- a full disk ------------------------------------------------------------------------------------------
class DiskFills:
    """Test callback: from the `after`-th checkpoint save on, torch.save writes 1 KB and then
    fails with ENOSPC, as on a full disk."""

    def __new__(cls, after: int = 0):
        import lightning as L

        class _Fill(L.Callback):
            saves = 0

            def setup(self, trainer, pl_module, stage):
                real = torch.save

                def save(obj, f, *args, **kwargs):
                    if isinstance(obj, dict) and "state_dict" in obj:
                        _Fill.saves += 1
                        if _Fill.saves > after:
                            with open(f, "wb") as fh:
                                fh.write(b"\0" * 1024)
                            raise OSError(errno.ENOSPC, "No space left on device")
                    return real(obj, f, *args, **kwargs)

                torch.save = save

        return _Fill()


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(xray_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", torch.save)  # restored after the callback replaces it
    cfg = train_cfg(
        xray_root,
        tmp_path / "a",
        "trainer.max_epochs=3",
        "logger=none",
        "callbacks.early_stopping=null",
        "+callbacks.fill._target_=tests.test_integrity.DiskFills",
        "+callbacks.fill.after=2",
    )
    with pytest.raises(DiskFullError) as err:
        train(cfg)
    message = str(err.value)
    folder = tmp_path / "a" / "checkpoints"
    assert "\n" not in message and f"no space left in '{folder}'" in message and "needs about" in message
    # epoch 0's two checkpoints were written; epoch 1's writes failed: the old files are intact, no temporary left
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert load_checkpoint(folder / "last.ckpt")["epoch"] == 0
    # from the command line: one line, exit 2, nothing under a checkpoint's final name
    res = run_cli(
        "train.py",
        f"data.root={xray_root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "debug=tiny",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=2",
        "logger=none",
        "callbacks.progress_bar=null",
        "+callbacks.fill._target_=tests.test_integrity.DiskFills",
        f"hydra.run.dir={tmp_path / 'b'}",
    )
    one_error_line(res, f"no space left in '{tmp_path / 'b' / 'checkpoints'}'", "needs about")
    assert not (tmp_path / "b" / "checkpoints").is_dir() or not list((tmp_path / "b" / "checkpoints").iterdir())


# ---- signals ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_training_with_the_resume_line(sig, status, xray_root, tmp_path):
    common = [
        f"data.root={xray_root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "debug=tiny",
        "trainer.accelerator=cpu",
        "data.val_fraction=0.25",
        "trainer.max_epochs=3",
        "callbacks.early_stopping=null",
        "callbacks.progress_bar=null",
        "logger=none",
    ]
    run = tmp_path / "run"
    # the process sends itself `sig` when epoch index 1 starts (epoch 0 and its checkpoints are done)
    res = run_cli(
        "train.py",
        *common,
        f"hydra.run.dir={run}",
        "+callbacks.kill._target_=tests.helpers.KillAfterEpoch",
        "+callbacks.kill.epoch=0",
        f"+callbacks.kill.sig={sig}",
    )
    assert res.returncode == status, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr[-3000:]
    assert re.fullmatch(
        rf"interrupted at epoch 2, step \d+ by {sig}; resume with: python train.py resume={run} "
        r"\(goes on after epoch 1, from last.ckpt\)",
        res.stderr.strip(),
    ), res.stderr
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert not (run / "train_summary.json").exists()
    if sig == "SIGTERM":  # the printed command finishes the run
        res = run_cli("train.py", *common, f"resume={run}")
        assert res.returncode == 0, res.stderr[-3000:]
        assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 2
        assert (run / "train_summary.json").is_file()


@pytest.mark.parametrize("sig, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_while_decoding_is_one_line_too(sig, status, xray_root, tmp_path, monkeypatch, capsys):
    """Before fit (checking, decoding) Lightning's handler is not there yet: SIGTERM and Ctrl-C
    still end with one line and 143/130, and SIGTERM's handler is given back afterwards."""
    import os
    import signal
    import time

    from pneumonia.data.datamodule import ChestXrayDataModule

    def decoding(self, stage=None):
        os.kill(os.getpid(), getattr(signal, sig))
        time.sleep(5)  # the handler raises here, long before this ends
        raise AssertionError("the signal did not stop decoding")

    monkeypatch.setattr(ChestXrayDataModule, "setup", decoding)
    before = signal.getsignal(signal.SIGTERM)
    started = time.perf_counter()
    with pytest.raises(SystemExit) as stop:
        train(train_cfg(xray_root, tmp_path, "trainer.max_epochs=1", "logger=none"))
    assert stop.value.code == status and time.perf_counter() - started < 60
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted by {sig} before training started (while checking or decoding): nothing to resume; "
        "run the command again"
    )
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_while_calibrating_names_the_command_that_finishes_it(xray_root, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("pneumonia.runners.train.calibrate_threshold", interrupted)
    with pytest.raises(SystemExit) as stop:
        train(train_cfg(xray_root, tmp_path, "trainer.max_epochs=1", "logger=none"))
    assert stop.value.code == 130
    best = tmp_path / "checkpoints" / "best.ckpt"
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        "interrupted by SIGINT while choosing the threshold on validation (training is done); calibrate "
        f"with: python -m pneumonia.tools.calibrate {best}"
    )
    with pytest.raises(CheckpointError, match="is not calibrated"):
        Predictor.from_checkpoint(best)


def test_a_full_disk_outside_the_checkpoints_is_one_line_too(xray_root, tmp_path, monkeypatch):
    from pathlib import Path

    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name in ("val_metrics.json", "train_summary.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(DiskFullError, match=rf"^no space left in '{re.escape(str(tmp_path))}'; .* free there"):
        train(train_cfg(xray_root, tmp_path, "trainer.max_epochs=1", "logger=none"))
