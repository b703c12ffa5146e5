"""torchvision's ResNet-18, DenseNet-121 (CheXNet's network) and EfficientNet-B0 as one-logit
pneumonia classifiers, from scratch or from torchvision's ImageNet weights.

    TorchvisionNet("densenet121", in_channels=1, weights="IMAGENET1K_V1")

The input is what every net of this project gets, the preset's float image in [0, 1] with 1
(gray) or 3 (RGB) channels; the ImageNet normalisation is inside `forward` (constant buffers),
so training, the Predictor and an exported ONNX model need nothing extra. For a gray input the
first conv's RGB weights are summed into one channel and the input is normalised with the mean
of the three ImageNet means and of the three stds (`grayscale_`).

`weights` (config `model.weights`): null builds torchvision's random init; `DEFAULT` or a name
of the arch's torchvision weights enum (`IMAGENET1K_V1`) is downloaded by torchvision into
`$TORCH_HOME/hub/checkpoints` (`~/.cache/torch/...`) when the net is built for training. A net
built to receive a checkpoint's weights says so, `TorchvisionNet(..., pretrained=False)` (or
`build_net(spec, pretrained=False)`, as the Predictor does), and never downloads: the
checkpoint replaces every weight anyway, and the architecture does not depend on `weights`.

`features` is an `nn.Sequential` of the conv stages whose last element is the activation the
head pools (an `nn.ReLU`, which `explain.gradcam.default_layer` looks for): an explicit ReLU
after ResNet's last block (which already ends in one: ReLU twice is ReLU once) and after
DenseNet's last batch norm (torchvision applies `F.relu` there); EfficientNet's last SiLU is
a `GradCamSiLU`, an `nn.ReLU` subclass that computes SiLU, so the maths stays torchvision's.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from typing import Annotated, Any, Literal
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse

import torch
import torch.hub
from torch import nn
from torch.nn import functional as F

from pneumonia.errors import ConfigError
from pneumonia.signature import Ge, Lt, check_arguments

__all__ = [
    "ARCHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MIN_IMAGE_SIZE",
    "GradCamSiLU",
    "TorchvisionNet",
    "gray_conv",
    "resolve_weights",
]

ARCHS = ("resnet18", "densenet121", "efficientnet_b0")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_IMAGE_SIZE = 32  # every arch downsamples 32x: smaller inputs vanish before the last stage


class GradCamSiLU(nn.ReLU):
    """SiLU (x * sigmoid(x)), EfficientNet's activation, typed as an `nn.ReLU` so that
    `explain.gradcam.default_layer` (the last `nn.ReLU` of `features[-1]`) finds the last
    activation of EfficientNet's last stage. It computes SiLU, not ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=self.inplace)

    def extra_repr(self) -> str:
        return "silu" + (", inplace=True" if self.inplace else "")


def gray_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of an RGB first conv taking one gray channel: its weights summed over R, G, B.

    On a gray image g replicated to three channels, conv(g, g, g) = sum_c W_c * g = gray_conv(g)
    exactly (the usual way to reuse ImageNet weights on gray inputs)."""
    if conv.in_channels != 3 or conv.groups != 1:
        raise ValueError(f"gray_conv needs an RGB conv with groups=1, got {conv}")
    # torch types a Conv2d's kernel_size, stride, padding and dilation as tuple[int, ...]
    gray = nn.Conv2d(
        1,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]  # torch types Conv2d's attributes as tuple[int, ...]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            assert gray.bias is not None  # bias=True above
            gray.bias.copy_(conv.bias)
    return gray


def resolve_weights(arch: str, weights: Any) -> Any:
    """torchvision's weights enum member that `model.weights` names (None for null); a one-line
    `ConfigError` listing the valid names for anything else. Needs no network."""
    if weights is None:
        return None
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    names = list(enum.__members__)  # e.g. IMAGENET1K_V1, DEFAULT
    if isinstance(weights, str):
        name = weights.strip()
        if name.startswith(enum.__name__ + "."):  # "ResNet18_Weights.IMAGENET1K_V1" also works
            name = name[len(enum.__name__) + 1 :]
        match = {n.upper(): n for n in names}.get(name.upper())
        if match is not None:
            return enum[match]
    raise ConfigError(
        f"model.weights={weights!r} is not a torchvision weight of {arch}: use null "
        f"(random init, train from scratch) or one of {', '.join(names)}"
    )


def _download_error(err: BaseException, arch: str, weights: Any, requested: str | None) -> ConfigError:
    """One line for a failed download or read of `weights`: why, and where to put the file by hand."""
    cause = err.reason if isinstance(err, URLError) and not isinstance(err, HTTPError) else err
    text = str(cause).strip()
    reason = text.splitlines()[0][:200] if text else type(err).__name__
    filename = os.path.basename(urlparse(weights.url).path)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    return ConfigError(
        f"model.weights={requested or weights.name}: could not download torchvision's {arch} weights "
        f"({reason}); use model.weights=null to train from scratch, "
        f"or put {filename} (from {weights.url}) in {folder}"
    )


_LOAD_ERRORS = (OSError, RuntimeError, EOFError, pickle.UnpicklingError)  # URLError, timeouts, bad hash/file


def _torchvision_model(arch: str, weights: Any, requested: str | None = None) -> nn.Module:
    """torchvision's RGB model, with `weights` (an enum member) loaded when given: torchvision
    downloads them into $TORCH_HOME/hub/checkpoints unless the file is already there."""
    import torchvision.models as tvm

    builder = getattr(tvm, arch)
    if weights is None:
        return builder(weights=None)
    try:
        return builder(weights=weights, progress=True)
    except _LOAD_ERRORS as err:
        raise _download_error(err, arch, weights, requested) from None


class TorchvisionNet(nn.Module):
    """A torchvision backbone -> global average pool -> dropout -> one logit, shape (N,).

    arch: resnet18 | densenet121 | efficientnet_b0.
    in_channels: 1 (gray, the first conv summed over RGB) or 3.
    image_size: the input size, checked only (these nets take any size >= 32).
    weights: null (random init) or torchvision's weights name for `arch` (DEFAULT, IMAGENET1K_V1).
    dropout: before the output layer (torchvision's heads: 0 for ResNet/DenseNet, 0.2 for EfficientNet).
    pretrained: False for a net whose weights a checkpoint is about to replace: `weights` is then
        only recorded (no download, no cache read). Not a config setting: the caller's (the
        Predictor and a resumed run say False).
    """

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(
        self,
        arch: Literal["resnet18", "densenet121", "efficientnet_b0"] = "resnet18",  # ARCHS
        in_channels: Literal[1, 3] = 1,  # 1 = grayscale (the first conv's RGB weights summed), 3 = RGB
        image_size: Annotated[int, Ge(32)] = 150,  # MIN_IMAGE_SIZE; checked only (model.image_size is data.image_size)
        weights: str | None = None,
        dropout: Annotated[float, Ge(0), Lt(1)] = 0.0,
        *,
        pretrained: bool = True,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:  # e.g. debug=tiny's model.depth, meant for the custom CNN
            first, *more = sorted(unknown)
            nor = f"nor {', '.join(more)}; " if more else ""
            raise ConfigError(
                f"{first} is not a setting of arch={arch} ({nor}its settings: arch, in_channels, image_size, "
                "weights, dropout); drop the override or option that sets it (debug=tiny sets the custom CNN's)"
            )
        # the signature declares each argument's type and range; the config layer adds the `model.` prefix
        check_arguments(TorchvisionNet, {k: v for k, v in locals().items() if k != "unknown"})
        self.arch = arch
        self.weights = weights
        enum = resolve_weights(arch, weights) if pretrained else None
        model = _torchvision_model(arch, enum, weights)

        self.features, channels = _stages(arch, model)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(float(dropout)), nn.Linear(channels, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.in_channels = 3
        if in_channels == 1:
            self.grayscale_()

    def grayscale_(self) -> TorchvisionNet:
        """Make this RGB net take one gray channel, in place: the first conv becomes `gray_conv`
        of itself, and the input is normalised with the mean of the ImageNet means and of the
        stds. (Exact when the three channels are normalised alike; with ImageNet's slightly
        different per-channel statistics it is the standard approximation.)"""
        if self.in_channels == 1:
            return self
        name, conv = next((n, m) for n, m in self.features.named_modules() if isinstance(m, nn.Conv2d))
        parent, _, attr = name.rpartition(".")
        setattr(self.features.get_submodule(parent) if parent else self.features, attr, gray_conv(conv))
        self.mean = self.mean.mean(dim=1, keepdim=True)
        self.std = self.std.mean(dim=1, keepdim=True)
        self.in_channels = 1
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.head(self.pool(self.features(x))).squeeze(1)

    def extra_repr(self) -> str:
        return f"arch={self.arch}, in_channels={self.in_channels}, weights={self.weights}"


def _stages(arch: str, model: Any) -> tuple[nn.Sequential, int]:  # model: torchvision's, its parts differ by arch
    """torchvision's conv stages as one `nn.Sequential` ending in the activation its head
    pools, and the number of channels of that activation."""
    if arch == "resnet18":
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        stages = OrderedDict((n, getattr(model, n)) for n in names)
        # layer4 ends in ReLU already (called twice inside each block); a module of its own is
        # the one place Grad-CAM can hook, and ReLU(ReLU(x)) = ReLU(x). Not in place: the
        # block's ReLU saved that tensor for its backward.
        stages["relu_out"] = nn.ReLU(inplace=False)
        return nn.Sequential(stages), model.fc.in_features
    if arch == "densenet121":
        stages = OrderedDict(model.features.named_children())  # conv0 ... denseblock4, norm5
        stages["relu5"] = nn.ReLU(inplace=True)  # torchvision: F.relu(features, inplace=True)
        return nn.Sequential(stages), model.classifier.in_features
    # efficientnet_b0: features[0..8]; features[8] = 1x1 conv 320 -> 1280, BN, SiLU
    features = model.features
    last = features[-1]
    if not isinstance(last[-1], nn.SiLU):
        raise RuntimeError(f"unexpected torchvision {arch}: its last stage ends in {type(last[-1]).__name__}")
    last[-1] = GradCamSiLU(inplace=True)
    return features, model.classifier[-1].in_features
