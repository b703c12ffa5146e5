"""export.py quantize=int8: a QDQ int8 model within its parity bounds of fp32 on validation,
described in model.json and scored by the ONNX backend; bad settings are one line."""

import json

import numpy as np
import pytest

from pneumonia.errors import ConfigError
from pneumonia.export.sidecar import ExportError
from tests.helpers import compose_cfg

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")


def export_cfg(ckpt, out, *overrides):
    return compose_cfg("export", [f"ckpt_path={ckpt}", "verify=false", *overrides], out)


@pytest.fixture(scope="module")
def int8_export(tiny_checkpoint, tmp_path_factory):
    from pneumonia.export.runner import export

    out = tmp_path_factory.mktemp("int8")
    meta = export(export_cfg(tiny_checkpoint, out, "quantize=int8"))
    return out, meta


@pytest.mark.slow
def test_int8_model_is_quantized_and_within_its_bounds(int8_export):
    from pneumonia.export.onnx_predictor import sha256_file
    from pneumonia.export.quantize import MAX_AUROC_CHANGE, MIN_AGREEMENT

    out, meta = int8_export
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    q = meta["quantization"]
    assert q["mode"] == "int8" and q["format"] == "QDQ" and q["calibration_split"] == "validation"
    parity = q["parity"]
    assert parity["images"] > 0 and q["calibration_images"] <= parity["images"]
    assert abs(parity["auroc_change"]) <= MAX_AUROC_CHANGE and parity["agreement"] >= MIN_AGREEMENT
    assert json.loads((out / "model.json").read_text())["quantization"] == q
    assert meta["sha256"] == sha256_file(out / "model.onnx")  # the int8 file, not the fp32 one
    assert q["fp32_sha256"] == sha256_file(out / "model.fp32.onnx") != meta["sha256"]
    assert (out / "model.onnx").stat().st_size < (out / "model.fp32.onnx").stat().st_size
    card = (out / "MODEL_CARD.md").read_text()
    assert "quantized to int8" in card and "model.fp32.onnx" in card and "decisions agree with fp32" in card


def test_onnx_backend_scores_the_int8_model_like_fp32(int8_export, tiny_checkpoint):
    from pneumonia.export.onnx_predictor import OnnxPredictor
    from pneumonia.export.quantize import validation_images
    from pneumonia.inference import Predictor

    out, meta = int8_export
    images, _ = validation_images(Predictor.from_checkpoint(tiny_checkpoint))
    int8 = OnnxPredictor.from_model(out / "model.onnx").predict_images(images)
    fp32 = OnnxPredictor(out / "model.fp32.onnx", meta).predict_images(images)
    assert np.abs(int8 - fp32).max() == pytest.approx(meta["quantization"]["parity"]["max_abs_probability_difference"])
    t = meta["threshold"]
    assert np.mean((int8 >= t) == (fp32 >= t)) >= 0.99


@pytest.mark.slow
def test_a_model_with_tta_in_its_graph_quantizes(tiny_checkpoint, tmp_path):
    """experiment=best exports its TTA into the graph (GridSample), which onnxruntime's symbolic
    shape inference cannot follow: the int8 export still works and keeps its bounds."""
    from pneumonia.export.runner import export

    export(export_cfg(tiny_checkpoint, tmp_path, "tta=true", "quantize=int8", "calibration_images=16"))
    ops = {n.op_type for n in onnx.load(tmp_path / "model.fp32.onnx").graph.node}
    assert "GridSample" in ops
    parity = json.loads((tmp_path / "model.json").read_text())["quantization"]["parity"]
    assert abs(parity["auroc_change"]) <= 0.002 and parity["agreement"] >= 0.99


@pytest.mark.slow
def test_an_int8_model_outside_its_bounds_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    from pneumonia.export import quantize
    from pneumonia.export.runner import export

    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # no model can agree on more than all decisions
    with pytest.raises(ExportError, match="outside its bounds") as err:
        export(export_cfg(tiny_checkpoint, tmp_path, "quantize=int8"))
    assert "\n" not in str(err.value) and not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["quantize=int4"], "quantize='int4' must be null (fp32) or int8"),
        (["quantize=int8", "format=torch_export"], "needs format=onnx"),
        (["quantize=int8", "calibration_images=0"], "calibration_images=0"),
    ],
)
def test_bad_quantize_settings_are_one_line(tiny_checkpoint, tmp_path, overrides, words):
    from pneumonia.export.runner import export

    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        export(export_cfg(tiny_checkpoint, tmp_path, *overrides))
