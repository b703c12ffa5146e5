"""Shipping a trained model: `export.py` writes an ONNX model or a `torch.export` program,
its `model.json` sidecar and a `MODEL_CARD.md`; `predict.py backend=onnx` scores with the
ONNX model and the sidecar alone, without torch.

Light on purpose: importing `pneumonia.export`, `pneumonia.export.sidecar` or
`pneumonia.export.onnx_predictor` never imports torch (tested); `pneumonia.export.exporter`
(torch, onnx) and `pneumonia.export.card` (Jinja2) are imported by the export runner only.
"""

from pneumonia.export.sidecar import FORMAT_VERSION, FORMATS, SIDECAR_NAME, ExportError

__all__ = ["FORMATS", "FORMAT_VERSION", "SIDECAR_NAME", "ExportError"]
