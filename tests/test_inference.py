"""The inference core: one Predictor reads checkpoints, one preprocessing preset feeds every path."""

import csv
import subprocess
import sys

import pytest
import torch

from pneumonia import CLASSES
from pneumonia.data.datamodule import ChestXrayDataModule
from pneumonia.errors import CheckpointError, ConfigError
from pneumonia.inference import Predictor
from pneumonia.runners.eval import evaluate
from tests.helpers import compose_cfg


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def test_predictor_holds_what_the_checkpoint_says(checkpoint):
    p = Predictor.from_checkpoint(checkpoint)
    stored = torch.load(checkpoint, weights_only=True)
    assert not p.net.training and p.classes == CLASSES
    assert p.threshold == pytest.approx(float(stored["state_dict"]["threshold"]))
    assert p.threshold != 0.5  # calibrated on validation, not the default
    assert p.precision == stored["pneumonia"]["precision"]
    assert (p.preprocess.image_size, p.preprocess.channels) == (48, 1)  # debug=tiny
    assert p.recipe.threshold_method == "youden" and p.recipe.val_report["n"] > 0
    assert p.recipe.net["depth"] == 3
    summary = p.summary()
    assert summary["positive_class"] == "PNEUMONIA" and summary["preprocess"]["image_size"] == 48
    assert Predictor.from_checkpoint(checkpoint, threshold=0.9).threshold == 0.9
    probs = torch.tensor([0.1, 0.95, p.threshold])
    assert p.decide(probs).tolist() == [0, 1, 1]  # the threshold itself counts as PNEUMONIA


def test_recipe_and_calibration_are_typed_frozen_records(checkpoint):
    import dataclasses

    from pneumonia.inference.checkpoint import Calibration, Recipe, calibration_of, load_checkpoint, recipe_of

    ckpt = load_checkpoint(checkpoint)
    recipe, cal = recipe_of(ckpt, checkpoint), calibration_of(ckpt)
    assert isinstance(recipe, Recipe) and isinstance(cal, Calibration)
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.seed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cal.precision = "16-mixed"  # type: ignore[misc]
    # the plain dict keeps the keys and order model.json, the report and /info always had
    assert list(recipe.to_dict()) == [
        *("checkpoint", "epoch", "net", "optimizer", "scheduler", "pos_weight", "seed", "image_size"),
        *("channels", "augment", "threshold_method", "val_report", "val_roc", "calibrated", "temperature"),
        *("tta", "normalize", "crop"),
    ]
    assert recipe.calibrated and recipe.checkpoint == str(checkpoint) and recipe.image_size == 48
    assert cal.to_dict() == {k: v for k, v in ckpt["pneumonia"].items()}  # what calibration stored, round-tripped
    assert Predictor.from_checkpoint(checkpoint).recipe == recipe
    assert Recipe().to_dict() == {}  # a Predictor made from a network, not a checkpoint
    del ckpt["pneumonia"]
    assert calibration_of(ckpt) is None and not recipe_of(ckpt, checkpoint).calibrated


def test_same_file_gives_bit_identical_input_through_predictor_and_datamodule(checkpoint, xray_root, tmp_path):
    p = Predictor.from_checkpoint(checkpoint)
    dm = ChestXrayDataModule(
        **{**p.data_settings, "root": str(xray_root), "cache_dir": str(tmp_path / "cache"), "bad_image_report": None}
    )
    dm.setup("fit")
    images, labels, indices = next(iter(dm.val_dataloader()))
    x, _, _ = dm.on_after_batch_transfer((images, labels, indices), 0)  # the validation (eval) path
    for row, i in enumerate(indices.tolist()[:8]):
        path = dm.paths["val"][i]
        assert torch.equal(p.preprocess(path), x[row]), path


def test_predictor_scores_like_eval(checkpoint, xray_root, tmp_path):
    cfg = compose_cfg(
        "eval",
        [
            f"ckpt_path={checkpoint}",
            "trainer.accelerator=cpu",
            f"data.root={xray_root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "logger=none",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path,
    )
    evaluate(cfg)
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    p = Predictor.from_checkpoint(checkpoint)
    probs = p.predict_files([r["path"] for r in rows], batch_size=7)
    expected = torch.tensor([float(r["probability"]) for r in rows])
    assert torch.allclose(probs, expected, atol=2e-6)
    assert p.decide(probs).tolist() == [int(r["prediction"]) for r in rows]


def test_bad_predictor_settings_are_one_line_errors(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="precision='half'"):
        Predictor.from_checkpoint(checkpoint, precision="half")
    with pytest.raises(CheckpointError, match="does not exist"):
        Predictor.from_checkpoint(tmp_path / "missing.ckpt")
    stored = torch.load(checkpoint, weights_only=True)
    stored["hyper_parameters"]["net"]["depth"] = 2  # weights of a 3-block net
    torch.save(stored, tmp_path / "mismatch.ckpt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        Predictor.from_checkpoint(tmp_path / "mismatch.ckpt")


@pytest.mark.slow
def test_importing_inference_stays_light():
    code = (
        "import sys, pneumonia.inference; heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'matplotlib', 'tensorboard', 'lightning', 'pytorch_lightning', 'hydra', 'captum'}); print(heavy)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_checkpoint_carries_the_validation_roc(checkpoint):
    p = Predictor.from_checkpoint(checkpoint)
    roc, rep = p.recipe.val_roc, p.recipe.val_report
    t = roc["thresholds"]
    assert t == sorted(t) and len(t) == len(roc["sensitivity"]) == len(roc["specificity"]) > 2
    assert roc["n_pneumonia"] == rep["tp"] + rep["fn"] and roc["n_normal"] == rep["tn"] + rep["fp"]
    # the stored threshold sits between two validation scores: the next stored point above it
    # is the operating point the model was calibrated at
    i = next(k for k, v in enumerate(t) if v >= p.threshold)
    assert roc["sensitivity"][i] == pytest.approx(rep["recall"])
    assert roc["specificity"][i] == pytest.approx(rep["specificity"])
    assert roc["sensitivity"][0] == 1.0 and roc["specificity"][-1] >= roc["specificity"][0]


def test_a_probability_at_the_threshold_is_pneumonia_everywhere():
    from pneumonia.evaluation.metrics import report

    probs = torch.tensor([0.2, 0.3, 0.3, 0.7])
    labels = torch.tensor([0, 1, 0, 1])
    rep = report(probs, labels, 0.3)  # 0.3 itself is PNEUMONIA, as Predictor.decide says
    assert (rep["tp"], rep["fp"], rep["tn"], rep["fn"]) == (2, 1, 1, 0)
    assert rep["threshold"] == 0.3
