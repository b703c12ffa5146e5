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
import math
from pathlib import Path
from typing import Any

from pneumonia.errors import UserError

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "INSTALL_EXPORT",
    "ONNX_MODULES",
    "SIDECAR_NAME",
    "ExportError",
    "read_sidecar",
    "require_export_extra",
]

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
        raise ExportError(
            f"model '{model_path}' does not exist" if not model_path.exists() else f"model '{model_path}' is not a file"
        )
    path = model_path.parent / SIDECAR_NAME
    if not path.is_file():
        raise ExportError(
            f"'{model_path}' has no {SIDECAR_NAME} beside it: keep the folder export.py wrote "
            f"(the model file, {SIDECAR_NAME}, MODEL_CARD.md) together"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"'{path}' is not readable JSON ({str(err).splitlines()[0][:200]})") from None
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise ExportError(f"'{path}' is not a model.json written by export.py (no format_version)")
    if meta["format_version"] != FORMAT_VERSION:
        raise ExportError(
            f"'{path}' has format_version {meta['format_version']!r}; this version of pneumonia "
            f"reads format_version {FORMAT_VERSION} (export the checkpoint again, or use the "
            f"pneumonia version named in its provenance)"
        )
    if expected_format is not None and meta.get("format") != expected_format:
        raise ExportError(f"'{path}' describes a {meta.get('format')!r} model, not {expected_format!r}")
    missing = [k for k in ("input", "output", "preprocess", "classes", "threshold") if k not in meta]
    if missing:
        raise ExportError(f"'{path}' lacks {', '.join(missing)}: not a complete model.json")
    problem = schema_problem(meta)
    if problem:
        raise ExportError(f"'{path}': {problem} (edit it back, or export the checkpoint again)")
    return meta


# ---- the schema: what a reader relies on, checked before anything is built from it -------------
MIN_IMAGE_SIZE = 8  # data.preprocess.Preprocess's lowest; the model's own input size is checked on load
MAX_IMAGE_SIZE = 4096  # 16.8 MP per image, well under the 50 MP pixel limit
NORMALIZE = ("none", "standardize", "equalize")  # data.preprocess.NORMALIZE (tests keep them equal)
THRESHOLD_METHODS = (
    "fixed",
    "max_f1",
    "youden",
    "sensitivity",
    "youden_bootstrap",
    "binormal",
    "kernel",
    "platt",
    "midpoint",
)  # evaluation.threshold.METHODS (tests keep them equal)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def schema_problem(meta: dict[str, Any]) -> str | None:
    """The first key of `meta` (a model.json) whose type, range or value is wrong, as
    "key=value must be ..."; None when every checked key is right."""

    def bad(key: str, value: Any, rule: str) -> str:
        return f"{key}={value!r} must be {rule}"

    if meta.get("format") not in FORMATS:
        return bad("format", meta.get("format"), f"one of {', '.join(FORMATS)}")
    for key in ("model_file", "sha256"):
        if key in meta and not isinstance(meta[key], str):
            return bad(key, meta[key], "a string")
    for part in ("input", "output", "preprocess"):
        if not isinstance(meta[part], dict):
            return bad(part, meta[part], "an object")
    prep = meta["preprocess"]
    size, channels = prep.get("image_size"), prep.get("channels")
    if not _int(size) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        return bad("preprocess.image_size", size, f"an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    if not _int(channels) or channels not in (1, 3):
        return bad("preprocess.channels", channels, "1 (grayscale) or 3 (RGB)")
    if prep.get("normalize", "none") not in NORMALIZE:
        return bad("preprocess.normalize", prep.get("normalize"), f"one of {', '.join(NORMALIZE)}")
    for part in ("input", "output"):
        if not isinstance(meta[part].get("name"), str) or not meta[part]["name"]:
            return bad(f"{part}.name", meta[part].get("name"), "the tensor's name (a string)")
    shape = meta["input"].get("shape")
    if shape is not None:
        if not isinstance(shape, list) or len(shape) != 4 or shape[2] != shape[3]:
            return bad("input.shape", shape, '["batch", channels, size, size]')
        if shape[1] != channels:
            return bad("preprocess.channels", channels, f"the model input's, {shape[1]} (input.shape {shape})")
        if shape[2] != size:
            return bad("preprocess.image_size", size, f"the model input's, {shape[2]} (input.shape {shape})")
    classes = meta["classes"]
    if (
        not isinstance(classes, list)
        or len(classes) != 2
        or not all(isinstance(c, str) and c for c in classes)
        or classes[0] == classes[1]
    ):
        return bad("classes", classes, "two different class names, negative first")
    if "positive_class" in meta and meta["positive_class"] not in classes:
        return bad("positive_class", meta["positive_class"], f"one of the classes {classes}")
    threshold = meta["threshold"]
    if not _number(threshold) or not 0.0 <= threshold <= 1.0:
        return bad("threshold", threshold, "a number in [0, 1]")
    temperature = meta.get("temperature", 1.0)
    if not _number(temperature) or temperature <= 0:
        return bad("temperature", temperature, "a positive number")
    method = meta.get("threshold_method")
    if method is not None and method not in THRESHOLD_METHODS:
        return bad("threshold_method", method, f"null or one of {', '.join(THRESHOLD_METHODS)}")
    tta = meta.get("tta")
    if tta is not None and (not isinstance(tta, dict) or not isinstance(tta.get("enabled", False), bool)):
        return bad("tta", tta, 'an object with "enabled": true or false')
    return None
