"""Networks by name, and the LightningModule that trains them (`models.classifier`).

A net is described by a plain dict, as in `conf/model/*.yaml` and in every checkpoint:
`{"_target_": "pneumonia.models.CustomCNN", "depth": 5, ...}`. `build_net` builds it from
this registry only: a checkpoint cannot name any other code to run.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pneumonia.errors import CheckpointError
from pneumonia.models.custom_cnn import CustomCNN

__all__ = ["CustomCNN", "NETS", "build_net"]

# `_target_` -> class; both spellings of the path are accepted
NETS: dict[str, type[nn.Module]] = {
    "pneumonia.models.CustomCNN": CustomCNN,
    "pneumonia.models.custom_cnn.CustomCNN": CustomCNN,
}


def build_net(spec: dict[str, Any]) -> nn.Module:
    """The network a `model` config (or a checkpoint's `net`) describes."""
    target = str(spec.get("_target_", ""))
    if target not in NETS:
        raise CheckpointError(f"model._target_={target!r} is not a model of this project "
                              f"(one of: {', '.join(sorted(NETS))})")
    kwargs = {k: v for k, v in spec.items() if not str(k).startswith("_")}
    return NETS[target](**kwargs)
