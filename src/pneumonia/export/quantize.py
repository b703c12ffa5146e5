"""`export.py quantize=int8`: onnxruntime static quantization of the exported fp32 model
(QDQ format, per-channel int8 weights, uint8 activations), calibrated on validation images
decoded through the checkpoint's own preset, then checked against fp32 on the whole
validation split.

    result = quantize_int8(predictor, "model.fp32.onnx", "model.onnx")

The parity check scores every validation image with both models and reports the AUROC
change and the share of decisions that agree at the stored threshold. When fewer than
`MIN_AGREEMENT` agree, the threshold is chosen again on validation for the int8 model by the
checkpoint's own rule (`threshold_method`), and model.json carries that one. An int8 model
outside the bounds (`MAX_AUROC_CHANGE`, `MIN_AGREEMENT`) is refused with one line: use the
fp32 export. The calibration images are a subset of the validation images the check uses,
so the check is a parity check, not a held-out estimate.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumonia.export.onnx_predictor import session_options, sigmoid
from pneumonia.export.sidecar import ExportError

if TYPE_CHECKING:
    from pneumonia.inference import Predictor

MAX_AUROC_CHANGE = 0.002
MIN_AGREEMENT = 0.99
CALIBRATION_BATCH = 16


def validation_images(predictor: Predictor, data_root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's validation split as uint8 (N, C, S, S) and labels (N,): the split its
    stored data settings define, decoded by the preset (the decoded-image cache)."""
    from pneumonia.data.datamodule import ChestXrayDataModule

    settings = dict(predictor.data_settings)
    if data_root is not None:
        settings["root"] = str(data_root)
    settings["bad_image_report"] = None
    datamodule = ChestXrayDataModule(**settings)
    datamodule.check_layout(("fit",))
    datamodule.setup("fit")
    val = datamodule.splits["val"]
    return val.images[val.indices].numpy(), val.labels[val.indices].numpy().astype(np.int64)


def _batches(images: np.ndarray, size: int) -> list[np.ndarray]:
    return [
        np.ascontiguousarray(images[i : i + size], dtype=np.float32) / np.float32(255)
        for i in range(0, len(images), size)
    ]


def _probabilities(path: Path, images: np.ndarray, input_name: str, output_name: str) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"])
    out = [session.run([output_name], {input_name: x})[0].reshape(len(x)) for x in _batches(images, 64)]
    return sigmoid(np.concatenate(out))


def quantize_static_int8(fp32_path: Path, out_path: Path, batches: list[np.ndarray], input_name: str) -> None:
    """onnxruntime's static quantization with this project's settings (QDQ, per-channel int8
    weights, uint8 activations, MinMax) calibrated on `batches`; an `ExportError` when it fails.
    `quantize_int8` and `benchmarks/export.py` both quantize through here."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    prepared = out_path.with_name(out_path.stem + ".prep.onnx")
    try:
        # shape inference and graph clean-up, as ORT advises; ONNX's own shape inference, not ORT's
        # symbolic one (made for transformers), which fails on the GridSample of an in-graph TTA
        # ("object of type 'NoneType' has no len()" on experiment=best's export)
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    except Exception as err:  # onnxruntime raises many types for a graph it cannot quantize
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(
            f"quantize=int8: onnxruntime could not quantize the model ({first[:200]}); use the "
            f"fp32 export (quantize=null)"
        ) from None
    finally:
        prepared.unlink(missing_ok=True)


def quantize_int8(
    predictor: Predictor,
    fp32_path: str | Path,
    out_path: str | Path,
    *,
    input_name: str,
    output_name: str,
    data_root: str | None = None,
    calibration_images: int = 256,
) -> dict[str, Any]:
    """Write the int8 model to `out_path`; returns model.json's `quantization` record (its
    `threshold` is the one to serve: the stored one, or the one chosen again)."""
    from pneumonia.evaluation.statistics import auroc
    from pneumonia.evaluation.threshold import choose_threshold

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    images, labels = validation_images(predictor, data_root)
    step = max(1, len(images) // calibration_images)
    calibration = images[::step][:calibration_images]

    quantize_static_int8(fp32_path, out_path, _batches(calibration, CALIBRATION_BATCH), input_name)
    fp32 = _probabilities(fp32_path, images, input_name, output_name)
    int8 = _probabilities(out_path, images, input_name, output_name)
    threshold = float(predictor.threshold)
    agree = float(np.mean((fp32 >= np.float32(threshold)) == (int8 >= np.float32(threshold))))
    method = predictor.recipe.threshold_method
    served, rechosen = threshold, False
    if agree < MIN_AGREEMENT and method:
        served = float(choose_threshold(int8, labels, method=method, value=threshold))
        rechosen = True
    agree_served = float(np.mean((fp32 >= np.float32(threshold)) == (int8 >= np.float32(served))))
    both_classes = labels.min() != labels.max()
    auroc_fp32 = float(auroc(fp32, labels)) if both_classes else None
    auroc_int8 = float(auroc(int8, labels)) if both_classes else None
    change = None if auroc_fp32 is None or auroc_int8 is None else auroc_int8 - auroc_fp32
    parity = {
        "images": int(len(images)),
        "split": "validation",
        "auroc_fp32": auroc_fp32,
        "auroc_int8": auroc_int8,
        "auroc_change": change,
        "max_abs_probability_difference": float(np.max(np.abs(fp32 - int8))),
        "agreement_at_stored_threshold": agree,
        "threshold": served,
        "threshold_rechosen": rechosen,
        "agreement": agree_served,
        "bounds": {"max_auroc_change": MAX_AUROC_CHANGE, "min_agreement": MIN_AGREEMENT},
    }
    if (change is not None and abs(change) > MAX_AUROC_CHANGE) or agree_served < MIN_AGREEMENT:
        out_path.unlink(missing_ok=True)
        raise ExportError(
            f"quantize=int8: the int8 model is outside its bounds on {len(images)} validation images "
            f"(AUROC change {change if change is None else f'{change:+.4f}'}, limit "
            f"±{MAX_AUROC_CHANGE}; decisions agreeing with fp32 {agree_served:.2%}, at least "
            f"{MIN_AGREEMENT:.0%}): use the fp32 export (quantize=null)"
        )
    return {
        "mode": "int8",
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8, per channel",
        "activations": "uint8, per tensor",
        "calibration_method": "MinMax",
        "calibration_images": int(len(calibration)),
        "calibration_split": "validation",
        "fp32_model_file": fp32_path.name,
        "parity": parity,
    }
