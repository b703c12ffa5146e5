"""`model.json`: what an inference service needs beside the exported model file, without
this package. No torch here: the ONNX backend of `predict.py` reads it in a torch-free
process.

The file (format_version 1) holds:

- `format` (`onnx` | `torch_export`), `model_file`, its `sha256`, `opset` (ONNX only);
- `input`: tensor name, dtype, shape `["batch", C, S, S]`, layout, value range;
- `output`: tensor name, shape `["batch"]` (one logit per image) and its meaning;
- `preprocess`: the decode/resize/scale rule (`Preprocess.describe()` and the steps);
- `classes`, `positive_class`, `threshold` (validation-chosen), `decision`, `temperature`
  (fitted on validation, already inside the model), `threshold_precision` (the precision
  the threshold was chosen under);
- `validation`: the metrics stored in the checkpoint, measured on validation (and
  `validation_roc`, sensitivity and specificity per threshold, when stored);
- `recipe`: how the network was trained; `provenance`: package version, git commit,
  torch/onnx versions, export time; `verification`: the export's own parity check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pneumonia.errors import UserError

__all__ = ["FORMATS", "FORMAT_VERSION", "INSTALL_EXPORT", "ONNX_MODULES", "SIDECAR_NAME", "ExportError", "read_sidecar",
           "require_export_extra"]

FORMAT_VERSION = 1
SIDECAR_NAME = "model.json"
FORMATS = {"onnx": "model.onnx", "torch_export": "model.pt2"}  # format -> model file name
INSTALL_EXPORT = "pip install 'pneumonia[export]'"
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")  # what format=onnx needs: the `export` extra


class ExportError(UserError):
    """An export that cannot be made or read: a missing extra, a bad sidecar, a bad folder."""


def require_export_extra(what: str, *modules: str) -> None:
    """Import `modules`, or one line that names the missing one and the extra to install."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ExportError(f"{what} needs the Python package '{name}': {INSTALL_EXPORT}") from None


def read_sidecar(model_path: str | Path, *, expected_format: str | None = None) -> dict[str, Any]:
    """The `model.json` beside `model_path`, checked: it exists, is JSON of a known
    format_version, and names this model file's format."""
    model_path = Path(model_path).expanduser()
    if not model_path.is_file():
        raise ExportError(f"model '{model_path}' does not exist" if not model_path.exists()
                          else f"model '{model_path}' is not a file")
    path = model_path.parent / SIDECAR_NAME
    if not path.is_file():
        raise ExportError(f"'{model_path}' has no {SIDECAR_NAME} beside it: keep the folder export.py wrote "
                          f"(the model file, {SIDECAR_NAME}, MODEL_CARD.md) together")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"'{path}' is not readable JSON ({str(err).splitlines()[0][:200]})") from None
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise ExportError(f"'{path}' is not a model.json written by export.py (no format_version)")
    if meta["format_version"] != FORMAT_VERSION:
        raise ExportError(f"'{path}' has format_version {meta['format_version']!r}; this version of pneumonia "
                          f"reads format_version {FORMAT_VERSION} (export the checkpoint again, or use the "
                          f"pneumonia version named in its provenance)")
    if expected_format is not None and meta.get("format") != expected_format:
        raise ExportError(f"'{path}' describes a {meta.get('format')!r} model, not {expected_format!r}")
    missing = [k for k in ("input", "output", "preprocess", "classes", "threshold") if k not in meta]
    if missing:
        raise ExportError(f"'{path}' lacks {', '.join(missing)}: not a complete model.json")
    return meta
