"""Reading and amending checkpoints safely (`weights_only=True`: tensors and plain types only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pneumonia.errors import CheckpointError

REQUIRED_KEYS = ("state_dict", "hyper_parameters", "datamodule_hyper_parameters")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint as a dict; a `CheckpointError` for anything that is not one of ours."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"'{path}' is not a readable checkpoint of this project ({first[:200]})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CheckpointError(f"'{path}' is not a checkpoint written by this project's train.py")
    return ckpt


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> None:
    """Write atomically, so a crash never leaves a half-written best checkpoint."""
    path = Path(path)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
