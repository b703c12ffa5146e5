"""Networks by name, and the LightningModule that trains them (`models.classifier`).

A net is described by a plain dict, as in `conf/model/*.yaml` and in every checkpoint:
`{"_target_": "pneumonia.models.CustomCNN", "depth": 5, ...}`. `build_net` builds it from
this registry only: a checkpoint cannot name any other code to run.

`pretrained` is the caller's, never the spec's: `build_net(spec, pretrained=False)` builds a net
whose weights a checkpoint is about to replace (no download or read of `model.weights`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pneumonia.errors import CheckpointError, ConfigError
from pneumonia.models.custom_cnn import CustomCNN
from pneumonia.models.ensemble import Ensemble
from pneumonia.models.torchvision_nets import TorchvisionNet
from pneumonia.signature import with_prefix

__all__ = ["CustomCNN", "Ensemble", "NETS", "TorchvisionNet", "build_net", "describe_net"]

# `_target_` -> class; both spellings of the path are accepted
NETS: dict[str, type[nn.Module]] = {
    "pneumonia.models.CustomCNN": CustomCNN,
    "pneumonia.models.custom_cnn.CustomCNN": CustomCNN,
    "pneumonia.models.Ensemble": Ensemble,  # members: a list of specs of this registry
    "pneumonia.models.ensemble.Ensemble": Ensemble,
    "pneumonia.models.TorchvisionNet": TorchvisionNet,  # resnet18, densenet121, efficientnet_b0
    "pneumonia.models.torchvision_nets.TorchvisionNet": TorchvisionNet,
}


# the nets with pretrained weights of their own to load (an Ensemble: its members may have)
_PRETRAINED: tuple[type[nn.Module], ...] = (TorchvisionNet, Ensemble)


def build_net(spec: dict[str, Any], *, pretrained: bool = True) -> nn.Module:
    """The network a `model` config (or a checkpoint's `net`) describes. `pretrained=False`:
    its weights come from a checkpoint next, so `model.weights` is not downloaded or read."""
    target = str(spec.get("_target_", ""))
    if target not in NETS:
        raise CheckpointError(
            f"model._target_={target!r} is not a model of this project (one of: {', '.join(sorted(NETS))})"
        )
    kwargs = {k: v for k, v in spec.items() if not str(k).startswith("_")}
    if "pretrained" in kwargs:
        raise ConfigError(
            "model.pretrained is not a setting: model.weights says which pretrained weights to start from "
            "(null: none); drop the override"
        )
    cls = NETS[target]
    if issubclass(cls, _PRETRAINED):
        kwargs["pretrained"] = pretrained
    try:
        return cls(**kwargs)
    except ConfigError as err:  # the net names its bare argument (`depth=9 ...`): the key is `model.depth`
        raise with_prefix(err, "model.", kwargs) from None


Ensemble.build_member = staticmethod(build_net)  # members are nets of this registry


def describe_net(net: dict[str, Any]) -> str:
    """One line on the network a spec describes: the custom CNN, a torchvision backbone or an
    ensemble of members (each described the same way)."""
    target = str(net.get("_target_", "n/a")).rsplit(".", 1)[-1]
    if target == "Ensemble":
        members = net.get("members") or []
        return f"an ensemble of {len(members)} networks, {net.get('combine', 'prob')} averaging: " + "; ".join(
            describe_net(m) for m in members
        )
    if target == "TorchvisionNet":
        weights = net.get("weights")
        start = f"from torchvision's {weights} ImageNet weights" if weights else "trained from scratch"
        return f"torchvision {net.get('arch', 'n/a')}, {net.get('in_channels', 'n/a')} input channel(s), {start}"
    return (
        f"{target}: depth {net.get('depth', 'n/a')}, batch norm {'yes' if net.get('batch_norm') else 'no'}, "
        f"dense {net.get('dense_units', 'n/a')}"
    )
