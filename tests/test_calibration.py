"""Temperature scaling after training: fitted on validation logits, stored in the checkpoint,
the threshold chosen after it, applied by every scoring path through the Predictor."""

import csv
import json
import shutil

import lightning as L
import pytest
import torch

from pneumonia.data.datamodule import ChestXrayDataModule
from pneumonia.errors import ConfigError
from pneumonia.evaluation import statistics as st
from pneumonia.evaluation.calibration import check_settings
from pneumonia.runners.calibration import calibrate_threshold
from pneumonia.evaluation.threshold import choose_threshold
from pneumonia.inference import Predictor
from pneumonia.inference.checkpoint import load_checkpoint, temperature
from pneumonia.inference.predictor import TemperatureScaled
from pneumonia.runners.eval import evaluate
from tests.helpers import compose_cfg

SETTINGS = {"method": "youden", "value": 0.5, "target_sensitivity": 0.95}


@pytest.fixture(scope="module")
def scaled(tiny_checkpoint, xray_root, tmp_path_factory):
    """A copy of the tiny checkpoint calibrated again with calibration.temperature=true."""
    out = tmp_path_factory.mktemp("temperature")
    ckpt = out / "best.ckpt"
    shutil.copy(tiny_checkpoint, ckpt)
    raw = Predictor.from_checkpoint(ckpt)
    dm = ChestXrayDataModule(
        **{**raw.data_settings, "root": str(xray_root), "cache_dir": str(out / "cache"), "bad_image_report": None}
    )
    dm.setup("fit")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=raw.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    calibrated = calibrate_threshold(
        trainer, dm, str(ckpt), SETTINGS, out, calibration={"temperature": True}, interval_settings={"resamples": 300}
    )
    return ckpt, out, dm, calibrated.module, calibrated.val_report


def test_temperature_is_stored_and_reported_before_and_after(scaled, tiny_checkpoint):
    ckpt, out, _, module, val_report = scaled
    stored = load_checkpoint(ckpt)["pneumonia"]
    t = stored["temperature"]
    assert 0.05 <= t <= 20 and t != 1.0
    assert temperature(load_checkpoint(tiny_checkpoint)) == 1.0  # calibrated without: none stored
    val = json.loads((out / "val_metrics.json").read_text())
    cal = val["calibration"]
    assert cal["temperature"] == pytest.approx(t) and cal["bins"] == 15
    assert cal["nll"] <= cal["before_temperature"]["nll"] + 1e-9  # T minimises the validation NLL
    assert {"ece", "brier"} <= set(cal["before_temperature"])
    assert val["at_threshold"]["ci95"]["auroc"] and val["bootstrap"]["resamples"] == 300
    assert stored["val_report"]["calibration"]["temperature"] == pytest.approx(t)
    assert isinstance(module.net, TemperatureScaled) and float(module.net.temperature) == pytest.approx(t)
    assert float(module.threshold) == pytest.approx(val_report["threshold"])


def test_the_returned_module_is_the_one_the_stored_checkpoint_gives(scaled):
    """calibrate_threshold builds its module from the weights it already loaded, not by reading
    the file it has just written: the same threshold buffer, temperature and weights."""
    ckpt, _, _, module, _ = scaled
    reread = Predictor.from_checkpoint(ckpt).lightning_module()
    assert torch.equal(module.threshold, reread.threshold)
    assert torch.equal(module.net.temperature, reread.net.temperature)
    mine, theirs = module.state_dict(), reread.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_threshold_is_chosen_on_the_temperature_scaled_probabilities(scaled):
    ckpt, _, dm, _, val_report = scaled
    raw = Predictor.from_checkpoint(ckpt, temperature=1.0)
    scaled_predictor = Predictor.from_checkpoint(ckpt)
    t = scaled_predictor.temperature
    assert raw.temperature == 1.0 and not isinstance(raw.net, TemperatureScaled)
    val = dm.splits["val"]
    images = val.images[val.indices]
    labels = val.labels[val.indices]
    logits = raw.logits(raw.preprocess.to_input(images))
    probs = scaled_predictor.predict_images(images)
    assert torch.allclose(probs, torch.sigmoid(logits / t), atol=1e-5)  # the Predictor applies logit / T
    expected = choose_threshold(torch.sigmoid(logits.double() / t).float(), labels)
    assert val_report["threshold"] == pytest.approx(expected, abs=1e-3)
    assert scaled_predictor.threshold == pytest.approx(val_report["threshold"])
    assert scaled_predictor.summary()["temperature"] == pytest.approx(t)
    # the ranking, and so the AUROC, does not change
    assert st.auroc(probs.numpy(), labels.numpy()) == pytest.approx(st.auroc(logits.numpy(), labels.numpy()))


@pytest.mark.slow
def test_eval_and_predict_apply_the_stored_temperature(scaled, xray_root, tmp_path):
    ckpt, _, _, _, _ = scaled
    predictor = Predictor.from_checkpoint(ckpt)
    for name, extra, expected_t in (("stored", [], predictor.temperature), ("raw", ["temperature=1.0"], 1.0)):
        out = tmp_path / name
        rep = evaluate(
            compose_cfg(
                "eval",
                [
                    f"ckpt_path={ckpt}",
                    "trainer.accelerator=cpu",
                    f"data.root={xray_root}",
                    f"data.cache_dir={tmp_path / 'cache'}",
                    "logger=none",
                    "gallery_size=0",
                    "describe=false",
                    "intervals.resamples=200",
                    "trainer.enable_progress_bar=false",
                    *extra,
                ],
                out,
            )
        )
        with open(out / "predictions.csv") as f:
            rows = list(csv.DictReader(f))
        want = Predictor.from_checkpoint(ckpt, temperature=expected_t).predict_files([r["path"] for r in rows])
        assert torch.allclose(torch.tensor([float(r["probability"]) for r in rows]), want, atol=2e-6)
        assert (rep["calibration"]["temperature"] is None) == (expected_t == 1.0)
        if expected_t != 1.0:
            assert set(rep["calibration"]["before_temperature"]) == {"ece", "brier"}
            assert "before temperature" in (out / "report.html").read_text()


def test_gradcam_runs_through_the_temperature_wrapper(scaled, xray_root):
    from pneumonia.explain.gradcam import gradcam

    predictor = Predictor.from_checkpoint(scaled[0])
    files = sorted((xray_root / "test" / "PNEUMONIA").iterdir())[:2]
    x = torch.stack([predictor.preprocess(f) for f in files])
    maps, probs = gradcam(predictor.net, x, threshold=predictor.threshold)
    with torch.no_grad():  # Grad-CAM's own pass is in fp32: the scaled sigmoid of the raw net's logits
        expected = torch.sigmoid(predictor.raw_net(x).float() / predictor.temperature)
    assert maps.shape[0] == 2 and torch.allclose(probs, expected, atol=1e-5)


def test_bad_temperature_settings_are_one_line_errors(tiny_checkpoint):
    with pytest.raises(ConfigError, match="temperature=0.0 must be a positive number"):
        Predictor.from_checkpoint(tiny_checkpoint, temperature=0.0)
    with pytest.raises(ConfigError, match="calibration.temperature='yes' must be true or false"):
        check_settings({"temperature": "yes"}, None)
    with pytest.raises(ConfigError, match="intervals.resamples=-1"):
        check_settings(None, {"resamples": -1})
