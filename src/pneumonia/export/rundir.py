"""The export's output folder: checked before anything is written, and before Hydra
creates it (a Hydra callback), so an unwritable folder is one line, not a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from pneumonia.export.sidecar import ExportError

__all__ = ["RunDirCheck", "check_output_dir"]


def check_output_dir(path: str | Path, key: str = "hydra.run.dir") -> Path:
    """`path` as an absolute Path if it is, or can be made, a writable folder; else an
    `ExportError` naming `key`."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ExportError(f"{key}='{path}' is a file, not a folder: choose another output folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ExportError(f"{key}='{path}' cannot be created: '{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"{key}='{path}' cannot be created: '{existing}' is not writable")
    return path


class RunDirCheck(Callback):
    """Hydra callback (conf/export.yaml): checks the run folder before Hydra creates it."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        try:
            check_output_dir(config.hydra.run.dir)
        except ExportError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
