"""What every entry point does around its runner: required keys checked in one line each,
the runner imported only after Hydra parsed the command line (heavy imports), a
`UserError` printed as `error: <one line>` with exit status 2 instead of a traceback, and
the run folder of a single run that failed that way removed when it holds nothing but
Hydra's own files (no empty runs left in outputs/ or TensorBoard). A sweep's job folders
stay: `sweep_summary` lists them as unfinished."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pneumonia.errors import UserError

CKPT_EXAMPLE = "outputs/train/<run>/checkpoints/best.ckpt"


def run(cfg: DictConfig, runner: str, script: str, required: dict[str, str] | None = None) -> Any:
    """Check `required` keys (key -> an example value), then call `runner` ("module:function")
    with `cfg` and return what it returns."""
    for key, example in (required or {}).items():
        if OmegaConf.is_missing(cfg, key):
            print(f"error: {key} is required, e.g. python {script} {key}={example}", file=sys.stderr)
            _remove_empty_run()
            raise SystemExit(2)
    module, function = runner.split(":")
    try:
        return getattr(importlib.import_module(module), function)(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        _remove_empty_run()
        raise SystemExit(2) from None


def is_empty_run(folder: Path) -> bool:
    """True when `folder` holds only Hydra's `.hydra*/` config folders, top-level `*.log`
    files and empty folders: nothing a user would want to keep."""
    for f in folder.rglob("*"):
        if f.is_file():
            rel = f.relative_to(folder)
            if not (rel.parts[0].startswith(".hydra") or (len(rel.parts) == 1 and f.suffix == ".log")):
                return False
    return True


def _remove_empty_run() -> None:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.RUN:
            return
        folder = Path(hydra_cfg.runtime.output_dir)
    except (ValueError, AttributeError, ImportError):  # not under @hydra.main
        return
    if folder.is_dir() and is_empty_run(folder):
        shutil.rmtree(folder, ignore_errors=True)
