"""`OnnxPredictor`: an exported `model.onnx` and its `model.json`, scored with onnxruntime
on the CPU, without torch.

    predictor = OnnxPredictor.from_model("outputs/export/<time>/model.onnx")
    images = np.stack([predictor.load(p) for p in ["a.jpeg", "b.dcm"]])   # uint8 (N, C, S, S)
    probs = predictor.predict_images(images)                              # P(pneumonia), float32 (N,)
    decisions = predictor.decide(probs)                                   # 1 = PNEUMONIA

It follows the sidecar exactly: decode with `pneumonia.data.decode` (the code
`Preprocess.load` runs: the same uint8 array, bit for bit), /255 to float32 NCHW, one
logit per image, sigmoid, `probability >= threshold` is PNEUMONIA. It mirrors the part of
`pneumonia.inference.Predictor` that `predict.py` uses, so the prediction loop runs on
either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.data import decode
from pneumonia.data.pixels import DEFAULT_MAX_PIXELS
from pneumonia.export.sidecar import ExportError, read_sidecar, require_export_extra

__all__ = ["OnnxPredictor", "session_options", "sha256_file", "sigmoid"]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def session_options(threads: int | None = None) -> Any:
    """onnxruntime options used for scoring: every graph optimisation, sequential execution,
    `threads` intra-op threads (None: one per core, onnxruntime's default). Measured in
    benchmarks/export.py."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: no warnings about unused initializers
    if threads:
        options.intra_op_num_threads = int(threads)
    return options


class OnnxPredictor:
    """An ONNX model ready to score on the CPU: preprocessing, threshold and classes from
    its `model.json`."""

    precision = "32-true"
    backend = "onnx"
    device = "cpu (onnxruntime)"

    def __init__(
        self,
        model_path: str | Path,
        meta: dict[str, Any],
        *,
        threshold: float | None = None,
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        require_export_extra("backend=onnx", "onnxruntime")
        import onnxruntime as ort

        self.model_path = Path(model_path)
        self.max_pixels = max_pixels  # files over it are refused from their header (predict's max_pixels)
        self.source = str(self.model_path)
        self.meta = meta
        prep = meta["preprocess"]
        self.image_size, self.channels = int(prep["image_size"]), int(prep["channels"])
        self.classes = tuple(meta["classes"])
        self.threshold = float(meta["threshold"] if threshold is None else threshold)
        # inside the graph (model.json 'tta'; older exports: the recipe's data.tta)
        self.tta = bool((meta.get("tta") or {}).get("enabled", (meta.get("recipe") or {}).get("tta", False)))
        self.input_name = meta["input"]["name"]
        self.output_name = meta["output"]["name"]
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"'{self.model_path}' cannot be loaded by onnxruntime ({first[:200]})") from None
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != ([self.input_name], [self.output_name]):
            raise ExportError(
                f"'{self.model_path}' has inputs/outputs {names}, but its model.json says "
                f"{[self.input_name]}/{[self.output_name]}: the files do not belong together"
            )
        # the graph's input size is fixed at export (only the batch is free): model.json must agree
        shape = list(self.session.get_inputs()[0].shape)
        for key, value, dim in (
            ("channels", self.channels, 1),
            ("image_size", self.image_size, 2),
            ("image_size", self.image_size, 3),
        ):
            if len(shape) != 4 or (isinstance(shape[dim], int) and shape[dim] != value):
                raise ExportError(
                    f"model.json's preprocess.{key}={value} does not fit '{self.model_path}', whose "
                    f"input is {shape}: the files do not belong together (export again)"
                )

    @classmethod
    def from_model(
        cls,
        model_path: str | Path,
        *,
        threshold: float | None = None,
        threads: int | None = None,
        check_hash: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> OnnxPredictor:
        """`model_path` (a `model.onnx`) with the `model.json` beside it."""
        model_path = Path(model_path).expanduser()
        meta = read_sidecar(model_path)
        if meta.get("format") != "onnx":
            raise ExportError(
                f"model={model_path}: backend=onnx needs a model.onnx, and its model.json describes "
                f"a {meta.get('format')!r} model"
            )
        if check_hash and meta.get("sha256") and sha256_file(model_path) != meta["sha256"]:
            raise ExportError(
                f"'{model_path}' is not the model its model.json describes (sha256 differs): a "
                f"damaged or altered file, or files of two exports mixed; keep the files of one export "
                f"together, or export again"
            )
        return cls(model_path, meta, threshold=threshold, threads=threads, max_pixels=max_pixels)

    # ---- the preprocessing of model.json ------------------------------------------------
    def load(self, path: str | Path) -> np.ndarray:
        """One file as a (C, S, S) uint8 array: the same code and result as `Preprocess.load`."""
        return decode.load_image(path, self.image_size, self.channels, self.max_pixels, "max_pixels")

    @staticmethod
    def to_input(images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, S, S) → float32 in [0, 1] (bit-identical to `Preprocess.to_unit`; the graph normalises)."""
        return np.ascontiguousarray(images, dtype=np.float32) / np.float32(255)

    # ---- scoring -------------------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Float32 inputs (N, C, S, S) in [0, 1] → logits (N,)."""
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(x))

    def predict_tensor(self, x: np.ndarray) -> np.ndarray:
        """Float32 inputs (N, C, S, S) in [0, 1] → P(pneumonia) (N,)."""
        return sigmoid(self.logits(x))

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Preprocessed uint8 images (N, C, S, S) → P(pneumonia) (N,)."""
        return self.predict_tensor(self.to_input(images))

    def predict_files(self, paths: Sequence[str | Path], batch_size: int = 64) -> np.ndarray:
        """P(pneumonia) for each file (an unreadable file raises)."""
        paths = list(paths)
        probs = [
            self.predict_images(np.stack([self.load(p) for p in paths[i : i + batch_size]]))
            for i in range(0, len(paths), batch_size)
        ]
        return np.concatenate(probs) if probs else np.empty(0, np.float32)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """1 (PNEUMONIA) where the probability reaches the threshold, else 0 (NORMAL)."""
        return (np.asarray(probs, dtype=np.float32) >= np.float32(self.threshold)).astype(np.int64)

    def summary(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "positive_class": self.meta.get("positive_class", self.classes[-1]),
            "threshold": self.threshold,
            "precision": self.precision,
            "backend": self.backend,
            "model": str(self.model_path),
            "preprocess": self.meta["preprocess"],
            "recipe": self.meta.get("recipe", {}),
        }


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in float32, as torch.sigmoid computes it on the CPU (exp(-x)
    overflows to inf for x < -88: the probability is then 0, without a warning)."""
    logits = np.asarray(logits, dtype=np.float32)
    with np.errstate(over="ignore"):
        return (np.float32(1) / (np.float32(1) + np.exp(-logits))).astype(np.float32)
