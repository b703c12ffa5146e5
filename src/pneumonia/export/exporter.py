"""Export a Predictor's network: ONNX (`torch.onnx.export(..., dynamo=True)`) or a
`torch.export` ExportedProgram (`.pt2`), both with a dynamic batch dimension, then check
the exported model against PyTorch eager on synthetic batches of sizes the export never
saw.

The network is the Predictor's `net` (eval mode, fp32; with the validation-fitted
temperature inside it when calibration fitted one) behind a wrapper whose only job is to
name the input `image`; it returns one logit per image, shape (N,), whose sigmoid is the
probability the Predictor gives.
"""

from __future__ import annotations

import copy
import logging
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumonia.export.onnx_predictor import sha256_file, sigmoid
from pneumonia.export.sidecar import ONNX_MODULES, ExportError, require_export_extra
from pneumonia.inference import Predictor

log = logging.getLogger(__name__)

__all__ = [
    "EXAMPLE_BATCH",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "PARITY_TOLERANCE",
    "Logits",
    "build_sidecar",
    "export_net",
    "git_commit",
    "load_exported",
    "verify",
]

INPUT_NAME, OUTPUT_NAME = "image", "logit"
EXAMPLE_BATCH = 2  # the batch size traced; 0 and 1 are specialised by torch.export, so not those
PARITY_TOLERANCE = 1e-4  # largest |probability difference| accepted against eager fp32


class Logits(nn.Module):
    """The network with its input named `image`: float32 (N, C, S, S) in [0, 1] → logits (N,)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


def exportable(predictor: Predictor) -> Logits:
    """A copy of the predictor's net, eval mode, fp32, contiguous (NCHW) weights, on the CPU,
    behind the preset's input normalisation (`data.normalize`; identity for `none`): the
    graph takes uint8 / 255, whatever the recipe normalised."""
    net = nn.Sequential(predictor.preprocess.normalizer(), copy.deepcopy(predictor.net))
    net = net.to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]  # torch's stubs: no memory_format= beside a device and dtype; Module.to takes it
    return Logits(net).eval()


def example_input(predictor: Predictor, batch: int = EXAMPLE_BATCH) -> torch.Tensor:
    prep = predictor.preprocess
    shape = (batch, prep.channels, prep.image_size, prep.image_size)
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


def _batch_dim() -> Any:
    """The free batch dimension, named `batch` in the ONNX graph."""
    return torch.export.Dim("batch", min=1)


def export_net(predictor: Predictor, path: Path, fmt: str, *, opset: int = 20) -> dict[str, Any]:
    """Write the network to `path` as `fmt` ("onnx" | "torch_export"); what model.json says
    about the file: tensor names and shapes, opset, sizes."""
    module = exportable(predictor)
    example = example_input(predictor)
    if fmt == "onnx":
        info = _export_onnx(module, example, path, opset, predictor)
    elif fmt == "torch_export":
        info = _export_pt2(module, example, path)
    else:  # the runner checks first; this guards direct calls
        raise ExportError(f"format={fmt!r} must be onnx or torch_export")
    return {**info, "model_file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _export_onnx(
    module: nn.Module, example: torch.Tensor, path: Path, opset: int, predictor: Predictor
) -> dict[str, Any]:
    require_export_extra("format=onnx", *ONNX_MODULES)
    import onnx

    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # their INFO lines (one per pass) would fill export.log
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            dynamic_shapes=({0: _batch_dim()},),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            verbose=False,
            optimize=True,
        )
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"torch.onnx.export (dynamo) failed at opset {opset}: {first[:300]}") from err
    assert program is not None  # dynamo=True returns an ONNXProgram
    model = program.model_proto
    model.doc_string = (
        "Pneumonia classifier: input 'image' float32 (batch, C, S, S) in [0, 1], output 'logit' "
        "(batch,); sigmoid(logit) = P(PNEUMONIA). See model.json."
    )
    summary = predictor.summary()
    for key, value in (
        ("pneumonia.threshold", f"{predictor.threshold:.9g}"),
        ("pneumonia.classes", ",".join(summary["classes"])),
        ("pneumonia.positive_class", summary["positive_class"]),
        ("pneumonia.image_size", str(predictor.preprocess.image_size)),
        ("pneumonia.channels", str(predictor.preprocess.channels)),
    ):
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:
        raise ExportError(f"onnx.checker rejects the exported model: {str(err).splitlines()[0][:300]}") from err
    saved = onnx.load(str(path), load_external_data=False)
    opsets = {o.domain or "ai.onnx": o.version for o in saved.opset_import}
    return {
        "opset": opsets.get("ai.onnx"),
        "opset_imports": opsets,
        "ir_version": saved.ir_version,
        "input": _onnx_value(saved.graph.input[0]),
        "output": _onnx_value(saved.graph.output[0]),
    }


def _onnx_value(value: Any) -> dict[str, Any]:
    import onnx

    tensor = value.type.tensor_type
    shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
    return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": shape}


def _export_pt2(module: nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=({0: _batch_dim()},))
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"torch.export.export failed: {first[:300]}") from err
    torch.export.save(program, str(path))
    signature = program.graph_signature
    c, s = example.shape[1], example.shape[2]
    return {
        "opset": None,
        "input": {"name": signature.user_inputs[0], "dtype": "float32", "shape": ["batch", c, s, s]},
        "output": {"name": signature.user_outputs[0], "dtype": "float32", "shape": ["batch"]},
    }


def load_exported(path: Path, fmt: str) -> Any:
    """A callable float32 numpy (N, C, S, S) → logits numpy (N,), from the exported file alone."""
    if fmt == "onnx":
        require_export_extra("checking an ONNX export", "onnxruntime")
        import onnxruntime as ort

        from pneumonia.export.onnx_predictor import session_options

        session = ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"])
        return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].reshape(len(x))
    module = torch.export.load(str(path)).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).float().numpy().reshape(len(x))

    return run


def verify(
    predictor: Predictor, path: Path, fmt: str, *, batch_sizes: tuple[int, ...] = (1, 3, 5), seed: int = 0
) -> dict[str, Any]:
    """Probabilities of the exported file against the Predictor (eager, fp32) on synthetic
    uint8 images, at batch sizes other than the traced one; raises past PARITY_TOLERANCE."""
    run = load_exported(path, fmt)
    rng = np.random.default_rng(seed)
    prep = predictor.preprocess
    worst, agree, total = 0.0, 0, 0
    for n in batch_sizes:
        images = rng.integers(0, 256, (n, prep.channels, prep.image_size, prep.image_size), dtype=np.uint8)
        eager = predictor.predict_images(torch.from_numpy(images)).numpy()
        exported = sigmoid(run(np.ascontiguousarray(images, dtype=np.float32) / np.float32(255)))
        worst = max(worst, float(np.abs(eager - exported).max()))
        agree += int(
            (
                predictor.decide(torch.from_numpy(eager)).numpy()
                == predictor.decide(torch.from_numpy(exported)).numpy()
            ).sum()
        )
        total += n
    if worst > PARITY_TOLERANCE:
        raise ExportError(
            f"the exported {fmt} model differs from PyTorch eager by {worst:.2e} in probability "
            f"(tolerance {PARITY_TOLERANCE:g}): not written as a usable export"
        )
    return {
        "against": "PyTorch eager, fp32 (Predictor, 32-true)",
        "inputs": "synthetic uint8 images",
        "batch_sizes": list(batch_sizes),
        "traced_batch_size": EXAMPLE_BATCH,
        "max_abs_probability_difference": worst,
        "tolerance": PARITY_TOLERANCE,
        "decisions_agree": f"{agree}/{total}",
    }


def git_commit(where: Path | None = None) -> dict[str, Any]:
    """The commit of the source tree this package runs from (None outside a git checkout),
    and whether it has uncommitted changes (read-only git commands)."""
    import pneumonia

    where = where or Path(pneumonia.__file__).resolve().parents[2]
    if not (where / "pyproject.toml").is_file():  # an installed wheel: no source tree to ask
        return {"git_commit": None, "git_dirty": None}

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", "--no-optional-locks", "-C", str(where), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def preprocess_steps(channels: int, image_size: int, normalize: str = "none", crop: str = "none") -> list[str]:
    """The decode rule of `pneumonia.data.decode.load_image`, step by step, for a service
    that reimplements it."""
    mode = "L" if channels == 1 else "RGB"
    return [
        "open the file with Pillow (DICOM: pydicom, modality LUT, then VOI LUT/window, min-max to 0..255 "
        "rounded, MONOCHROME1 inverted, colour DICOM averaged to gray)",
        f"JPEG files at least {2 * image_size} px on their short side: img.draft('{mode}', "
        f"({image_size}, {image_size})) before decoding (DCT-domain downscaling; it changes the pixels)",
        "16/32-bit and float images (PIL modes I, I;16*, F): x * 255 / (65535 if max > 255 else 255), "
        "clipped to 0..255, truncated to uint8",
        "palette or alpha images: composited on opaque black",
        f"img.convert('{mode}')" + (" (ITU-R 601-2 luma)" if channels == 1 else ""),
        f"img.resize(({image_size}, {image_size}), Image.BILINEAR): Pillow's bilinear, which filters when "
        "downscaling (OpenCV INTER_LINEAR or torch interpolate without antialias give other pixels)",
        f"uint8 array (H, W{'' if channels == 1 else ', 3'}) -> (1, {channels}, {image_size}, {image_size}) "
        "float32 / 255, NCHW"
        + (
            ", no mean/std normalisation"
            if normalize == "none"
            else f"; the graph applies the recipe's normalisation ({normalize}) itself"
        )
        + ("; the graph cuts each image to its content (data.crop=content) first, itself" if crop != "none" else ""),
    ]


def _tta_of(predictor: Predictor) -> dict[str, Any]:
    """model.json's `tta`: whether the exported model scores each image on test-time
    augmentation variants (inside the model: nothing for a service to do but pay the cost)."""
    from pneumonia.models.tta import TTA

    found = next((m for m in predictor.net.modules() if isinstance(m, TTA)), None)
    if found is None:
        return {"enabled": False, "variants": 1}
    return {
        "enabled": True,
        "variants": len(found.variants),
        "scales": list(found.scales),
        "shifts": list(found.shifts),
        "note": "inside the model: each image is scored on every variant (zoom about the centre, shifts "
        "left/right/up/down by a fraction of the image size), one forward pass of the network each, and "
        "the output is the logit of their mean probability",
    }


def build_sidecar(
    predictor: Predictor,
    fmt: str,
    info: dict[str, Any],
    *,
    verification: dict[str, Any] | None,
    threshold_precision: str | None,
) -> dict[str, Any]:
    """model.json (format_version 1; see `pneumonia.export.sidecar`)."""
    import datetime

    import pneumonia
    from pneumonia.export.sidecar import FORMAT_VERSION

    summary = predictor.summary()
    prep = predictor.preprocess
    temperature = float(getattr(predictor, "temperature", 1.0))  # fitted on validation; inside predictor.net
    recipe = dict(summary["recipe"])
    validation = recipe.pop("val_report", None)
    validation_roc = recipe.pop("val_roc", None)  # sensitivity/specificity per candidate threshold, if stored
    versions: dict[str, Any] = {"torch": torch.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime
        import onnxscript

        versions.update(onnx=onnx.__version__, onnxscript=onnxscript.__version__, onnxruntime=onnxruntime.__version__)
    tta = _tta_of(predictor)
    return {
        "format_version": FORMAT_VERSION,
        "format": fmt,
        "model_file": info["model_file"],
        "sha256": info["sha256"],
        "bytes": info["bytes"],
        "opset": info.get("opset"),
        "input": {**info["input"], "layout": "NCHW", "range": [0.0, 1.0], "batch": "dynamic (any size >= 1)"},
        "output": {
            **info["output"],
            "meaning": "one logit per image; sigmoid(logit) = P(PNEUMONIA)"
            + (
                f" (the network's logit already divided by the temperature {temperature:g} fitted on validation)"
                if temperature != 1.0
                else ""
            )
            + (
                f"; with test-time augmentation, the logit of the mean probability over {tta['variants']} "
                f"variants of the image"
                if tta["enabled"]
                else ""
            ),
            "batch": "dynamic, the input's",
        },
        "tta": tta,
        "preprocess": {
            **prep.describe(),
            "steps": preprocess_steps(prep.channels, prep.image_size, prep.normalize, prep.crop),
        },
        "classes": summary["classes"],
        "positive_class": summary["positive_class"],
        "threshold": predictor.threshold,
        "decision": f"{summary['positive_class']} if sigmoid(logit) >= threshold, else {summary['classes'][0]}",
        "temperature": temperature,
        "threshold_method": recipe.get("threshold_method"),
        "threshold_precision": threshold_precision,
        "calibrated": bool(recipe.get("calibrated")),
        "precision": "fp32",
        "validation": validation,
        "validation_note": "metrics of the patient-grouped validation split at the stored threshold, as stored in the "
        "checkpoint; not test numbers; ci95: patient-bootstrap 95% intervals where the checkpoint "
        "has them",
        "validation_roc": validation_roc,
        "recipe": recipe,
        "verification": verification,
        "provenance": {
            "package": "pneumonia",
            "package_version": pneumonia.__version__,
            **git_commit(),
            **versions,
            "numpy": np.__version__,
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
