"""export.py and predict.py backend=onnx: ONNX and torch.export parity with PyTorch eager,
the model.json sidecar and model card, the torch-free ONNX path, one-line errors."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import pneumonia
from pneumonia.data.preprocess import Preprocess
from pneumonia.errors import ConfigError
from pneumonia.export import ExportError
from pneumonia.export.onnx_predictor import OnnxPredictor
from pneumonia.config.rundir import check_output_dir
from pneumonia.export.runner import export
from pneumonia.inference import Predictor
from pneumonia.models import CustomCNN
from pneumonia.runners.predict import predict
from tests.helpers import PROJECT_ROOT, compose_cfg, run_cli, write_dicom

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")


def export_cfg(ckpt, out, *overrides):
    return compose_cfg("export", [f"ckpt_path={ckpt}", *overrides], out)


def predict_cfg(out, inputs, *overrides):
    return compose_cfg("predict", [f"inputs={inputs}", "device=cpu", *overrides], out)


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported once in each format: {format: folder}."""
    out = tmp_path_factory.mktemp("export")
    export(export_cfg(tiny_checkpoint, out / "onnx"))
    export(export_cfg(tiny_checkpoint, out / "pt2", "format=torch_export"))
    return {"onnx": out / "onnx", "torch_export": out / "pt2"}


@pytest.fixture(scope="module")
def eager(tiny_checkpoint):
    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="32-true")


def synthetic_images(n, channels, size, seed):
    """uint8 (n, C, S, S) images: a smooth body and noise, like the synthetic X-rays."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = (
        90
        + 60 * np.exp(-((xx - 0.5) ** 2) / 0.08)
        + 100 * rng.random((n, 1, 1, 1)) * np.exp(-((xx - 0.3) ** 2 + (yy - 0.55) ** 2) / 0.04)
    )
    img = body + rng.normal(0, 12, (n, channels, size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def assert_parity(eager_probs, probs, threshold):
    assert probs.shape == eager_probs.shape
    assert np.abs(probs - eager_probs).max() <= 1e-4
    assert ((probs >= np.float32(threshold)) == (eager_probs >= np.float32(threshold))).all()


@pytest.mark.slow
def test_onnx_and_torch_export_match_eager_at_any_batch_size(exported, eager):
    onnx_predictor = OnnxPredictor.from_model(exported["onnx"] / "model.onnx")
    program = torch.export.load(str(exported["torch_export"] / "model.pt2")).module()
    prep = eager.preprocess
    for n, seed in ((16, 0), (1, 1), (7, 2)):  # the export traced a batch of 2
        images = synthetic_images(n, prep.channels, prep.image_size, seed)
        expected = eager.predict_images(torch.from_numpy(images)).numpy()
        assert_parity(expected, onnx_predictor.predict_images(images), eager.threshold)
        with torch.inference_mode():
            logits = program(prep.to_input(torch.from_numpy(images)))
        assert logits.shape == (n,)
        assert_parity(expected, torch.sigmoid(logits).numpy(), eager.threshold)
        assert (onnx_predictor.decide(expected) == eager.decide(torch.from_numpy(expected)).numpy()).all()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torch_export"])
def test_original_network_exports_with_matching_scores(fmt, tmp_path):
    """The notebook's network (dilated, unpadded blocks 4-5) at 150 px gray, no checkpoint."""
    from pneumonia.export.exporter import export_net, load_exported, verify

    torch.manual_seed(0)
    net = CustomCNN(depth=5, in_channels=1, image_size=150)
    predictor = Predictor(net, Preprocess(150, 1), 0.5, precision="32-true")
    path = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt2")
    info = export_net(predictor, path, fmt)
    assert info["input"]["shape"] == ["batch", 1, 150, 150] and info["output"]["shape"] == ["batch"]
    check = verify(predictor, path, fmt)
    assert check["max_abs_probability_difference"] <= 1e-4 and check["decisions_agree"] == "9/9"
    images = synthetic_images(5, 1, 150, 3)
    expected = predictor.predict_images(torch.from_numpy(images)).numpy()
    threshold = float(np.median(expected))  # untrained: scores sit near 0.5, so decide at their median
    got = 1 / (1 + np.exp(-load_exported(path, fmt)(images.astype(np.float32) / np.float32(255))))
    assert_parity(expected, got.astype(np.float32), threshold)


def test_sidecar_says_what_a_service_needs(exported, eager, tiny_checkpoint):
    meta = json.loads((exported["onnx"] / "model.json").read_text())
    model = onnx.load(str(exported["onnx"] / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    graph_input, graph_output = model.graph.input[0], model.graph.output[0]
    assert meta["format_version"] == 1 and meta["format"] == "onnx" and meta["model_file"] == "model.onnx"
    assert meta["input"]["name"] == graph_input.name == "image" and meta["output"]["name"] == graph_output.name
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"  # a free batch dimension
    assert meta["input"]["shape"] == ["batch", 1, 48, 48] and meta["input"]["layout"] == "NCHW"
    assert meta["output"]["shape"] == ["batch"] and "sigmoid(logit) = P(PNEUMONIA)" in meta["output"]["meaning"]
    assert meta["opset"] == 20 and {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {20}
    assert meta["preprocess"]["image_size"] == 48 and meta["preprocess"]["scale"].startswith("uint8 / 255")
    assert meta["classes"] == ["NORMAL", "PNEUMONIA"] and meta["positive_class"] == "PNEUMONIA"
    assert meta["threshold"] == eager.threshold and meta["threshold_method"] == "youden"
    assert meta["validation"] == eager.recipe.val_report and meta["recipe"]["net"]["depth"] == 3
    assert meta["threshold_precision"] == Predictor.from_checkpoint(tiny_checkpoint).precision
    prov = meta["provenance"]
    assert prov["package_version"] == pneumonia.__version__ and prov["torch"] == torch.__version__
    assert prov["onnxruntime"] and (prov["git_commit"] is None or len(prov["git_commit"]) == 40)
    assert meta["verification"]["max_abs_probability_difference"] <= 1e-4
    pt2 = json.loads((exported["torch_export"] / "model.json").read_text())
    assert pt2["format"] == "torch_export" and pt2["model_file"] == "model.pt2" and pt2["opset"] is None
    assert pt2["input"]["name"] == "image" and pt2["threshold"] == meta["threshold"]

    card = (exported["onnx"] / "MODEL_CARD.md").read_text()
    for phrase in (
        "research and teaching only",
        "not a medical device",
        "Kermany et al.",
        "Guangzhou Women and Children's Medical Center",
        "by whole patients",
        "**validation** numbers",
        "95% intervals from a bootstrap over patients",
        "adults",
        "Grad-CAM) are available only in the torch backend",
        f"{eager.threshold:.4f}",
    ):
        assert phrase in card, phrase
    ci = meta["validation"]["ci95"]["auroc"]
    assert f"{meta['validation']['auroc']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" in card  # the interval beside the value


def test_onnx_backend_decodes_bit_identically_and_predicts_like_torch(exported, xray_root, tiny_checkpoint, tmp_path):
    # every kind of file the decoder handles gives the same uint8 array on both backends
    files = tmp_path / "files"
    files.mkdir()
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (90, 70), dtype=np.uint8)
    Image.fromarray(gray).save(files / "gray.png")
    Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(files / "big_rgb.jpeg")  # draft()
    Image.fromarray(gray.astype(np.uint16) * 200).save(files / "wide16.png")
    Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8), "RGBA").save(files / "alpha.png")
    write_dicom(files / "scan.dcm", gray.astype(np.uint16) * 16, photometric="MONOCHROME1")
    onnx_predictor = OnnxPredictor.from_model(exported["onnx"] / "model.onnx")
    preset = Preprocess(48, 1)
    for f in sorted(files.iterdir()):
        ours, theirs = onnx_predictor.load(f), preset.load(f)
        assert ours.dtype == theirs.dtype == np.uint8 and np.array_equal(ours, theirs), f.name
        batch = ours[None]
        assert np.array_equal(onnx_predictor.to_input(batch), preset.to_input(torch.from_numpy(batch)).numpy())

    # predict.py on both backends: the same rows and decisions, the same labelled summary
    torch_summary = predict(
        predict_cfg(
            tmp_path / "torch", xray_root / "test", f"ckpt_path={tiny_checkpoint}", "precision=32-true", "batch_size=5"
        )
    )
    onnx_summary = predict(
        predict_cfg(
            tmp_path / "onnx",
            xray_root / "test",
            "backend=onnx",
            f"model_path={exported['onnx'] / 'model.onnx'}",
            "batch_size=5",
        )
    )
    rows = {}
    for backend in ("torch", "onnx"):
        with open(tmp_path / backend / "predictions.csv") as f:
            rows[backend] = list(csv.DictReader(f))
    assert len(rows["onnx"]) == len(rows["torch"]) == 32
    for a, b in zip(rows["torch"], rows["onnx"]):
        assert a["path"] == b["path"] and a["prediction"] == b["prediction"] and a["label"] == b["label"]
        assert abs(float(a["probability"]) - float(b["probability"])) <= 1e-4
    assert onnx_summary["backend"] == "onnx" and onnx_summary["predicted"] == torch_summary["predicted"]
    for key, value in torch_summary["labelled"].items():
        assert onnx_summary["labelled"][key] == pytest.approx(value, abs=1e-6), key


def test_onnx_predict_path_imports_no_torch(exported, xray_root, tmp_path):
    files = sorted((xray_root / "test" / "PNEUMONIA").iterdir())[:2]
    argv = [
        "predict.py",
        "backend=onnx",
        f"model_path={exported['onnx'] / 'model.onnx'}",
        f"inputs=[{files[0]},{files[1]}]",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    code = (
        "import atexit, runpy, sys\n"
        "import pneumonia\n"
        "assert 'torch' not in sys.modules, 'import pneumonia imports torch'\n"
        "atexit.register(lambda: print('TORCH IMPORTED:', 'torch' in sys.modules))\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_path('predict.py', run_name='__main__')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 image(s) predicted" in res.stdout and "TORCH IMPORTED: False" in res.stdout, res.stdout


@pytest.mark.slow
def test_bad_input_is_one_line(exported, tiny_checkpoint, tmp_path, monkeypatch):
    # the CLI: a file that is not our checkpoint, an unknown format, a run folder under a file
    (tmp_path / "not.ckpt").write_bytes(b"PK\x03\x04 something else entirely")
    (tmp_path / "a_file").write_text("")
    for args, expected in (
        ([f"ckpt_path={tmp_path / 'not.ckpt'}"], "not a readable checkpoint of this project"),
        ([f"ckpt_path={tiny_checkpoint}", "format=tflite"], "format='tflite' must be one of"),
        (
            [f"ckpt_path={tiny_checkpoint}", f"hydra.run.dir={tmp_path / 'a_file' / 'x'}"],
            "a_file' is a file, not a folder",
        ),
    ):
        out = [] if any(a.startswith("hydra.run.dir") for a in args) else [f"hydra.run.dir={tmp_path / 'run'}"]
        res = run_cli("export.py", *args, *out)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert lines[-1].startswith("error: ") and expected in lines[-1], lines
    # a read-only folder (root may write anywhere, so the check is asked, not provoked)
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(ConfigError, match="is not writable"):
        check_output_dir(tmp_path / "ro" / "export")
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        export(export_cfg(tiny_checkpoint, tmp_path / "a_file"))

    # a missing extra names it
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ExportError, match=r"needs the Python package 'onnxscript': pip install 'pneumonia\[export\]'"):
        export(export_cfg(tiny_checkpoint, tmp_path / "no_extra"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match=r"'onnxruntime': pip install 'pneumonia\[export\]'"):
        OnnxPredictor.from_model(exported["onnx"] / "model.onnx")
    monkeypatch.undo()

    # the onnx backend: a model without its model.json, an unknown format_version, a swapped model file
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(exported["onnx"] / "model.onnx", lone)
    inputs = exported["onnx"]  # anything: the model is checked first
    with pytest.raises(ExportError, match="has no model.json beside it"):
        predict(predict_cfg(tmp_path / "p1", inputs, "backend=onnx", f"model_path={lone / 'model.onnx'}"))
    meta = json.loads((exported["onnx"] / "model.json").read_text())
    (lone / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ExportError, match="format_version 99; this version of pneumonia reads format_version 1"):
        OnnxPredictor.from_model(lone / "model.onnx")
    (lone / "model.json").write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(ExportError, match="sha256 differs"):
        OnnxPredictor.from_model(lone / "model.onnx")
    (lone / "model.json").write_text("{not json")
    with pytest.raises(ExportError, match="not readable JSON"):
        OnnxPredictor.from_model(lone / "model.onnx")
    with pytest.raises(ExportError, match="describes a 'torch_export' model"):
        predict(
            predict_cfg(tmp_path / "p2", inputs, "backend=onnx", f"model_path={exported['torch_export'] / 'model.pt2'}")
        )
    for overrides, match in (
        (["backend=onnx"], "backend=onnx needs model_path="),
        (["backend=onnx", "model_path=m.onnx", "explain=true"], "explain=true .* backend=torch"),
        (["backend=onnx", "model_path=m.onnx", "gallery=true"], "gallery=true"),
        (["backend=onnx", "model_path=m.onnx", "precision=bf16-mixed"], "fp32 only"),
        (["backend=tflite"], "backend='tflite' must be one of"),
        (["model_path=m.onnx", f"ckpt_path={tiny_checkpoint}"], "model_path= is for backend="),
    ):
        with pytest.raises(ConfigError, match=match):
            predict(predict_cfg(tmp_path / "p3", inputs, *overrides))


def test_a_fitted_temperature_is_inside_the_exported_model(tmp_path):
    import inspect

    from pneumonia.export.exporter import build_sidecar, export_net, verify

    if "temperature" not in inspect.signature(Predictor).parameters:
        pytest.skip("this Predictor has no temperature scaling")
    torch.manual_seed(1)
    predictor = Predictor(
        CustomCNN(depth=3, widths=(8, 16, 32), in_channels=1, image_size=48),
        Preprocess(48, 1),
        0.4,
        temperature=2.5,
        precision="32-true",
    )
    info = export_net(predictor, tmp_path / "model.onnx", "onnx")
    check = verify(predictor, tmp_path / "model.onnx", "onnx")  # against sigmoid(logit / 2.5)
    assert check["max_abs_probability_difference"] <= 1e-4
    meta = build_sidecar(predictor, "onnx", info, verification=check, threshold_precision=None)
    assert meta["temperature"] == 2.5 and "divided by the temperature 2.5" in meta["output"]["meaning"]


def test_model_card_names_the_network_it_holds():
    from pneumonia.export.card import describe_net

    cnn = {"_target_": "pneumonia.models.CustomCNN", "depth": 4, "batch_norm": True, "dense_units": 64}
    tv = {"_target_": "pneumonia.models.TorchvisionNet", "arch": "densenet121", "in_channels": 1, "weights": None}
    assert describe_net(cnn) == "CustomCNN: depth 4, batch norm yes, dense 64"
    assert describe_net(tv) == "torchvision densenet121, 1 input channel(s), trained from scratch"
    ens = describe_net({"_target_": "pneumonia.models.Ensemble", "combine": "logit", "members": [cnn, tv]})
    assert ens.startswith("an ensemble of 2 networks, logit averaging: CustomCNN: depth 4") and "densenet121" in ens


@pytest.mark.slow
def test_model_json_is_checked_against_its_schema_and_the_model(exported, xray_root, tmp_path):
    from pneumonia.evaluation.threshold import METHODS
    from pneumonia.data.preprocess import NORMALIZE
    from pneumonia.export import sidecar

    assert sidecar.THRESHOLD_METHODS == METHODS and sidecar.NORMALIZE == NORMALIZE  # the copies kept equal
    meta = json.loads((exported["onnx"] / "model.json").read_text())
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(exported["onnx"] / "model.onnx", folder)
    model = folder / "model.onnx"

    def with_changes(**changes):
        edited = json.loads(json.dumps(meta))
        for dotted, value in changes.items():
            node, *rest = dotted.split("__")
            (edited[node] if rest else edited).__setitem__(rest[0] if rest else node, value)
        (folder / "model.json").write_text(json.dumps(edited))

    size, channels = meta["preprocess"]["image_size"], meta["preprocess"]["channels"]
    assert channels == 1
    for changes, match in (
        ({"preprocess__image_size": 100000}, r"preprocess.image_size=100000 must be an integer in \[8, 4096\]"),
        ({"preprocess__image_size": 32}, rf"preprocess.image_size=32 must be the model input's, {size}"),
        ({"preprocess__channels": 3}, r"preprocess.channels=3 must be the model input's, 1"),
        ({"preprocess__channels": 2}, r"preprocess.channels=2 must be 1 \(grayscale\) or 3 \(RGB\)"),
        ({"threshold": "high"}, r"threshold='high' must be a number in \[0, 1\]"),
        ({"threshold": -1}, r"threshold=-1 must be a number in \[0, 1\]"),
        ({"threshold": True}, r"threshold=True must be a number"),
        ({"threshold_method": "magic"}, r"threshold_method='magic' must be null or one of"),
        ({"temperature": 0}, r"temperature=0 must be a positive number"),
        ({"classes": ["NORMAL"]}, r"classes=\['NORMAL'\] must be two different class names"),
        ({"preprocess__normalize": "zscore"}, r"preprocess.normalize='zscore' must be one of"),
        ({"input": "image"}, r"input='image' must be an object"),
    ):
        with_changes(**changes)
        with pytest.raises(ExportError, match=match) as err:
            OnnxPredictor.from_model(model)
        assert "\n" not in str(err.value) and "model.json" in str(err.value)
    # consistent in itself, but not the graph's input (fixed at export): refused on load
    with_changes(preprocess__image_size=32, input__shape=["batch", 1, 32, 32])
    with pytest.raises(
        ExportError,
        match=rf"preprocess.image_size=32 does not fit .* whose input is \['batch', 1, "
        rf"{size}, {size}\]",
    ):
        OnnxPredictor.from_model(model)
    # from the command line: one line, exit 2
    with_changes(threshold=-1)
    image = next((xray_root / "test" / "NORMAL").iterdir())
    res = run_cli(
        "predict.py", "backend=onnx", f"model_path={model}", f"inputs={image}", f"hydra.run.dir={tmp_path / 'p'}"
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("error: ") and "threshold=-1" in res.stderr
    # 4 KiB flipped inside the model file: its sha256 no longer matches
    (folder / "model.json").write_text(json.dumps(meta))
    OnnxPredictor.from_model(model)
    raw = bytearray(model.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4096] = bytes(b ^ 0xFF for b in raw[middle : middle + 4096])
    model.write_bytes(bytes(raw))
    with pytest.raises(ExportError, match="sha256 differs"):
        OnnxPredictor.from_model(model)
    res = run_cli(
        "predict.py", "backend=onnx", f"model_path={model}", f"inputs={image}", f"hydra.run.dir={tmp_path / 'p2'}"
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr and "sha256 differs" in res.stderr.splitlines()[-1]
