"""A run's output folder: checked before anything is written, and before Hydra creates it
(a Hydra callback in conf/hydra/default.yaml, for every entry point), so a folder that is a
file or cannot be written is one line, not a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from pneumonia.errors import ConfigError

__all__ = ["RunDirCheck", "check_output_dir", "make_output_dir"]


def check_output_dir(path: str | Path, key: str = "hydra.run.dir") -> Path:
    """`path` as an absolute Path if it is, or can be made, a writable folder; else an
    `ConfigError` naming `key`."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}='{path}' is a file, not a folder: choose another output folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}='{path}' cannot be created: '{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}='{path}' cannot be created: '{existing}' is not writable")
    return path


def make_output_dir(path: str | Path, key: str = "paths.output_dir") -> Path:
    """`check_output_dir`, then the folder created; the run's outputs go there."""
    path = check_output_dir(path, key)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{key}='{path}' cannot be created ({err.strerror or err})") from None
    return path


class RunDirCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml): checks a single run's folder before Hydra
    creates it."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        try:
            check_output_dir(config.hydra.run.dir)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
