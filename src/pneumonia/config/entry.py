"""What every entry point does around its runner: required keys checked in one line each,
the runner imported only after Hydra parsed the command line (heavy imports), and a
`UserError` printed as `error: <one line>` with exit status 2 instead of a traceback."""

from __future__ import annotations

import importlib
import sys
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
            raise SystemExit(2)
    module, function = runner.split(":")
    try:
        return getattr(importlib.import_module(module), function)(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
