"""Atomic file writes: a killed process or a full disk never leaves half a checkpoint or half
a cache under the final name."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pneumonia.errors import CheckpointError, UserError

_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, disk quota exceeded


class DiskFullError(UserError):
    """A write that ran out of space; the message names the folder and the space needed."""


def disk_full(
    err: OSError, path: str | Path, needed: int | None = None, *, folder: bool = False
) -> DiskFullError | None:
    """A one-line `DiskFullError` for an out-of-space `err` while writing the file `path` (or
    into the folder `path`, `folder=True`); None for any other error. `needed`: the bytes the
    file takes, when known."""
    if getattr(err, "errno", None) not in _FULL:
        return None
    where = Path(path) if folder else Path(path).parent
    try:
        free = f"; {shutil.disk_usage(where).free / 1e6:.1f} MB free there"
    except OSError:
        free = ""
    what = "" if folder else f": writing {Path(path).name}" + (f" needs about {needed / 1e6:.1f} MB" if needed else "")
    return DiskFullError(
        f"no space left in '{where}'{what}{free}; free some space (or point the output elsewhere) and run again"
    )


def checkpoint_file(path: str | Path) -> Path:
    """`path` (user-expanded) when it is a file; a one-line `CheckpointError` otherwise. Torch-free,
    so the entry points refuse a wrong `ckpt_path=` before torch is imported."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path '{path}' does not exist" if not path.exists() else f"ckpt_path '{path}' is not a file"
        )
    return path


def atomic_write(path: str | Path, write: Callable[[Path], object], *, needed: int | None = None) -> None:
    """`write(tmp)` into a temporary file beside `path`, then rename it over `path`. A full
    disk is a `DiskFullError` (`needed`: the bytes the file takes, for its message), and
    leaves neither a temporary file nor a partial `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        full = disk_full(err, path, needed)
        if full is None:
            raise
        raise full from None
    finally:
        tmp.unlink(missing_ok=True)


def tensor_bytes(obj: Any) -> int:
    """Bytes held by the tensors in `obj` (nested dicts, lists, tuples): about what
    `torch.save` writes."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp), needed=tensor_bytes(obj))
