"""model=resnet18 / densenet121 / efficientnet_b0 (torchvision backbones, `models.torchvision_nets`):
built from the composed configs with random weights (this machine cannot download), gray and
RGB input, a training step, the checkpoint round trip through the Predictor, Grad-CAM, the
gray-from-RGB weight conversion, the ImageNet-weights path from torchvision's cache, and
one-line errors for a failed download or a bad `model.weights`. Nothing here touches the
network: torchvision's downloader is replaced by one that fails."""

from __future__ import annotations

import copy
import urllib.error

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from pneumonia.runners.checks import check_train_config
from pneumonia.config.instantiate import instantiate
from pneumonia.errors import ConfigError
from pneumonia.explain.gradcam import default_layer, gradcam
from pneumonia.inference import Predictor
from pneumonia.models import NETS, TorchvisionNet, build_net
from pneumonia.models.classifier import PneumoniaClassifier
from pneumonia.models.torchvision_nets import ARCHS, GradCamSiLU, gray_conv
from tests.helpers import train_cfg

SIZE = 64  # training, round trip and Grad-CAM (a 2x2 last feature map); the shape checks use 32 px
BATCH = 4  # small batches, one shape per arch: about a second per test
SMALL = [
    f"data.image_size={SIZE}",
    f"data.batch_size={BATCH}",
    "data.val_fraction=0.25",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "logger=none",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


def cfg_for(root, tmp_path, arch, *overrides):
    return train_cfg(root, tmp_path, f"model={arch}", *SMALL, *overrides, tiny=False)


def spec_of(cfg) -> dict:
    return OmegaConf.to_container(cfg.model, resolve=True)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty torchvision cache ($TORCH_HOME) and a downloader that fails like a machine
    without internet; returns the list of URLs it was asked for."""
    import torch.hub

    asked: list[str] = []

    def offline(url, *args, **kwargs):
        asked.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return asked


def calibrate_bn(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """Running batch-norm statistics of one batch, like a trained net has (a fresh torchvision
    net in eval mode passes almost nothing through EfficientNet's many stages)."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative: one batch gives exactly its statistics
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval()


# ---- configs, shapes, Grad-CAM layer ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_config_builds_the_arch_for_gray_and_rgb(arch, xray_root, tmp_path):
    cfg = cfg_for(xray_root, tmp_path, arch)
    spec = spec_of(cfg)
    assert spec["_target_"] in NETS and spec["arch"] == arch and spec["weights"] is None
    assert spec["in_channels"] == 1 == cfg.data.channels and spec["image_size"] == SIZE
    net = build_net(spec).eval()
    assert isinstance(net, TorchvisionNet) and net.in_channels == 1
    with torch.no_grad():
        assert net(torch.rand(2, 1, 32, 32)).shape == (2,)  # like CustomCNN: (N,) logits; any size >= 32
    assert isinstance(net.features, nn.Sequential)
    assert isinstance(default_layer(net), GradCamSiLU if arch == "efficientnet_b0" else nn.ReLU)

    rgb_cfg = cfg_for(xray_root, tmp_path, arch, "model.in_channels=3")
    assert rgb_cfg.data.channels == 3
    rgb = build_net(spec_of(rgb_cfg)).eval()
    with torch.no_grad():
        assert rgb(torch.rand(2, 3, 32, 32)).shape == (2,)


def test_efficientnet_grad_cam_layer_computes_silu():
    x = torch.randn(100)
    assert torch.equal(GradCamSiLU()(x), nn.functional.silu(x))


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.arch=vgg16", "model.arch"),
        ("model.in_channels=2", "model.in_channels"),
        ("data.image_size=24", "data.image_size"),
        ("model.dropout=1.5", "model.dropout"),
        ("model.weights=IMAGENET1K_V9", "model.weights"),
        ("+model.depth=3", "model.depth"),  # e.g. debug=tiny, whose model keys are the custom CNN's
    ],
)
def test_bad_settings_are_one_line_config_errors(override, key, xray_root, tmp_path):
    """As a run checks them: the config layer (types and ranges, naming the key the user set:
    model.image_size is data.image_size) and then the net itself."""
    from pneumonia.config.instantiate import check_arguments

    cfg = cfg_for(xray_root, tmp_path, "resnet18", override)
    with pytest.raises(ConfigError) as err:
        check_arguments("model", cfg.model, TorchvisionNet)
        build_net(spec_of(cfg))
    message = str(err.value)
    assert message.startswith(key) and "\n" not in message
    if key == "model.weights":  # lists what is valid
        assert "IMAGENET1K_V1" in message and "DEFAULT" in message and "null" in message


# ---- gray from RGB ----------------------------------------------------------------------------
def test_gray_conv_on_a_replicated_gray_image_equals_the_rgb_conv():
    torch.manual_seed(0)
    rgb = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=True)
    gray = gray_conv(rgb)
    assert gray.in_channels == 1 and gray.weight.shape == (8, 1, 7, 7)
    torch.testing.assert_close(gray.weight, rgb.weight.sum(dim=1, keepdim=True))
    g = torch.rand(2, 1, 33, 33)
    with torch.no_grad():
        torch.testing.assert_close(gray(g), rgb(g.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_gray_net_from_rgb_weights_matches_the_rgb_net_on_gray_images(arch):
    """'Pretrained' RGB weights (random, batch norm calibrated), the state copied, the copy
    converted: on gray images replicated to RGB both nets agree when the RGB net normalises
    its three channels alike (with the gray net's mean and std): the conversion is exact.
    With ImageNet's per-channel statistics (means 0.485/0.456/0.406) they differ slightly: the
    usual approximation, which fine-tuning absorbs."""
    torch.manual_seed(1)
    g = torch.rand(BATCH, 1, 32, 32)
    rgb = calibrate_bn(TorchvisionNet(arch, in_channels=3, image_size=32), g.expand(-1, 3, -1, -1))
    gray = TorchvisionNet(arch, in_channels=3, image_size=32)
    gray.load_state_dict(rgb.state_dict())
    gray.grayscale_().eval()
    assert gray.in_channels == 1
    assert gray.mean.shape == gray.std.shape == (1, 1, 1, 1)
    torch.testing.assert_close(gray.mean.flatten(), rgb.mean.mean().reshape(1))
    uniform = copy.deepcopy(rgb)
    uniform.mean.fill_(float(gray.mean))
    uniform.std.fill_(float(gray.std))
    with torch.no_grad():
        y_gray, y_rgb, y_uniform = gray(g), rgb(g.expand(-1, 3, -1, -1)), uniform(g.expand(-1, 3, -1, -1))
    assert y_gray.std() > 1e-3  # the nets pass the image through
    torch.testing.assert_close(y_gray, y_uniform, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(y_rgb, y_uniform)  # per-channel statistics do differ a little


# ---- ImageNet weights: cache, failed download, checkpoints never download --------------------
def test_imagenet_weights_come_from_torchvisions_cache_converted_to_gray(no_network, tmp_path):
    import torchvision

    from pneumonia.models.torchvision_nets import resolve_weights

    url = resolve_weights("resnet18", "DEFAULT").url
    stored = torchvision.models.resnet18().state_dict()  # stands in for the downloaded file
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(stored, cache / url.rsplit("/", 1)[-1])
    net = TorchvisionNet("resnet18", in_channels=1, image_size=SIZE, weights="DEFAULT")
    assert no_network == []  # read from the cache, nothing downloaded
    torch.testing.assert_close(net.features.conv1.weight, stored["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(net.features.layer4[1].conv2.weight, stored["layer4.1.conv2.weight"])
    torch.testing.assert_close(net.features.bn1.running_var, stored["bn1.running_var"])


def test_training_start_builds_the_module_once_reading_the_weights_once(no_network, xray_root, tmp_path, monkeypatch):
    """check_train_config builds the run's one LightningModule, with the weights from
    torchvision's cache (no_network: the file is there), read once; a resumed run reads none."""
    import torchvision

    from pneumonia.models.torchvision_nets import resolve_weights

    url = resolve_weights("resnet18", "DEFAULT").url
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    stored = torchvision.models.resnet18().state_dict()
    torch.save(stored, cache / url.rsplit("/", 1)[-1])
    reads: list[str] = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: reads.append(str(f)) or real(f, *a, **k))
    parts = check_train_config(cfg_for(xray_root, tmp_path, "resnet18", "model.weights=DEFAULT"))
    assert reads == [str(cache / url.rsplit("/", 1)[-1])] and no_network == []
    assert parts.datamodule.hparams.image_size == SIZE  # the DataModule train() goes on with, not yet set up
    assert isinstance(parts.module, PneumoniaClassifier)
    torch.testing.assert_close(parts.module.net.features.layer4[1].conv2.weight, stored["layer4.1.conv2.weight"])
    reads.clear()
    resumed = cfg_for(xray_root, tmp_path, "resnet18", "model.weights=DEFAULT", f"ckpt_path={tmp_path / 'last.ckpt'}")
    check_train_config(resumed)
    assert reads == [] and no_network == []  # the checkpoint's weights replace them: not read


def test_failed_download_is_one_config_error_at_training_start(no_network, xray_root, tmp_path):
    cfg = cfg_for(xray_root, tmp_path, "densenet121", "model.weights=IMAGENET1K_V1")
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)  # train.py's first step: before any image is decoded
    message = str(err.value)
    assert "\n" not in message and message.startswith("model.weights=IMAGENET1K_V1: could not download")
    assert "Temporary failure in name resolution" in message and "model.weights=null" in message
    assert no_network and no_network[0] in message  # the URL, to fetch it by hand
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in message  # where to put it


def test_loading_a_checkpoint_never_downloads(no_network, xray_root, tmp_path):
    cfg = cfg_for(xray_root, tmp_path, "efficientnet_b0", "model.weights=DEFAULT")
    module = PneumoniaClassifier(net=spec_of(cfg), optimizer=OmegaConf.to_container(cfg.optimizer), pretrained=False)
    path = tmp_path / "pretrained.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "datamodule_hyper_parameters": {"image_size": SIZE, "channels": 1},
        },
        path,
    )
    predictor = Predictor.from_checkpoint(path, precision="32-true", threshold=0.5)  # never calibrated
    predictor.lightning_module()
    assert no_network == []
    assert predictor.recipe.net["weights"] == "DEFAULT"  # the recipe still says how it was trained
    with pytest.raises(ConfigError, match="could not download"):  # outside, the same spec would fetch them
        build_net(spec_of(cfg))


# ---- a training step, the checkpoint round trip, Grad-CAM -------------------------------------
@pytest.fixture(scope="module")
def datamodule(xray_root, tmp_path_factory):
    cfg = cfg_for(xray_root, tmp_path_factory.mktemp("bb_data"), "resnet18")
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    return dm


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_training_step_checkpoint_round_trip_and_gradcam(arch, datamodule, xray_root, tmp_path):
    cfg = cfg_for(xray_root, tmp_path, arch, "seed=3")
    L.seed_everything(3, verbose=False)
    module = PneumoniaClassifier(
        net=spec_of(cfg), optimizer=OmegaConf.to_container(cfg.optimizer), scheduler=None, seed=3
    )
    before = [p.detach().clone() for p in module.net.parameters()]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        limit_val_batches=0,
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 1
    assert any(not torch.equal(b, p) for b, p in zip(before, module.net.parameters()))  # it learned a step
    path = tmp_path / "step.ckpt"
    trainer.save_checkpoint(path)

    x = torch.rand(BATCH, 1, SIZE, SIZE)
    module.eval()
    with torch.no_grad():
        expected = torch.sigmoid(module(x).float())
    predictor = Predictor.from_checkpoint(path, precision="32-true", threshold=0.5)  # never calibrated
    assert isinstance(predictor.raw_net, TorchvisionNet) and predictor.raw_net.arch == arch
    torch.testing.assert_close(predictor.predict_tensor(x), expected, rtol=1e-5, atol=1e-6)
    images = torch.from_numpy(datamodule.preprocess.load(next(xray_root.glob("test/PNEUMONIA/*"))))[None]
    assert predictor.predict_images(images).shape == (1,)

    maps, probs = gradcam(predictor.net, x)
    assert maps.shape == (BATCH, SIZE, SIZE) and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)
    from pneumonia.app.service import Service, md_literal  # the app's page names the backbone, not the wrapper

    named = md_literal(f"torchvision {arch}, 1 input channel(s), trained from scratch")
    assert f"- network: {named}\n" in Service(predictor).describe_model()


@pytest.mark.slow
def test_onnx_export_needs_nothing_extra(tmp_path):
    """Normalisation and the gray first conv are inside the graph: the exported ResNet-18 takes
    the same [0, 1] input and gives the Predictor's probabilities."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pneumonia.export.exporter import export_net, verify

    torch.manual_seed(0)
    spec = {
        "_target_": "pneumonia.models.TorchvisionNet",
        "arch": "resnet18",
        "in_channels": 1,
        "image_size": 32,
        "weights": None,
        "dropout": 0.0,
    }
    module = PneumoniaClassifier(net=spec, optimizer={"_target_": "torch.optim.Adam", "_partial_": True})
    calibrate_bn(module.net, torch.rand(8, 1, 32, 32))
    path = tmp_path / "net.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "datamodule_hyper_parameters": {"image_size": 32, "channels": 1},
        },
        path,
    )
    predictor = Predictor.from_checkpoint(path, precision="32-true", threshold=0.5)  # never calibrated
    info = export_net(predictor, tmp_path / "model.onnx", "onnx")
    assert info["input"]["shape"] == ["batch", 1, 32, 32]
    report = verify(predictor, tmp_path / "model.onnx", "onnx")  # raises past 1e-4 in probability
    assert report["max_abs_probability_difference"] <= 1e-4


def test_archs_match_the_signature() -> None:
    """The fast CLI reads `arch`'s choices from TorchvisionNet's signature: they are ARCHS."""
    import typing

    from pneumonia.models import TorchvisionNet
    from pneumonia.signature import hints_of

    assert typing.get_args(hints_of(TorchvisionNet)["arch"]) == ARCHS
