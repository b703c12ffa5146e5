"""After training: score the validation split with the best checkpoint, optionally fit a
temperature there, choose the decision threshold and store both in that checkpoint for
eval.py and predict.py.

Order matters: the temperature T is fitted first (on the validation logits, minimising the
NLL of sigmoid(logit / T)), then the threshold is chosen on the temperature-scaled
probabilities, which are what every later scoring path (the `Predictor`) produces.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pneumonia.evaluation import statistics as st
from pneumonia.evaluation.analysis import calibration_summary, intervals
from pneumonia.evaluation.metrics import report
from pneumonia.evaluation.threshold import check_threshold_settings, choose_threshold, roc_points, rule_options
from pneumonia.inference import Predictor
from pneumonia.inference.checkpoint import store_calibration

log = logging.getLogger(__name__)

CALIBRATION_DEFAULTS, INTERVAL_DEFAULTS = st.CALIBRATION_DEFAULTS, st.INTERVAL_DEFAULTS


def check_settings(calibration: dict[str, Any] | None, interval_settings: dict[str, Any] | None,
                   threshold_settings: dict[str, Any] | None = None) -> None:
    """`ConfigError` now, before training, for a wrong `calibration.*` or `intervals.*` (and
    `threshold.*` when given: `threshold.check_threshold_settings`, which `calibrate_threshold`
    runs too)."""
    from pneumonia.errors import ConfigError

    if threshold_settings is not None:
        check_threshold_settings(threshold_settings)

    cal = {**CALIBRATION_DEFAULTS, **(calibration or {})}
    boot = {**INTERVAL_DEFAULTS, **(interval_settings or {})}
    if not isinstance(cal["temperature"], bool):
        raise ConfigError(f"calibration.temperature={cal['temperature']!r} must be true or false")
    for key, value, low in (("calibration.ece_bins", cal["ece_bins"], 1), ("intervals.resamples", boot["resamples"], 0),
                            ("intervals.seed", boot["seed"], 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{key}={value!r} must be an integer >= {low}")


def predict_logits(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
                   split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities, labels, indices, logits) of `split`, through the module's own device path."""
    datamodule.predict_split = split
    batches = trainer.predict(module, datamodule=datamodule)
    probs, labels, indices, logits = (torch.cat(t) for t in zip(*batches))
    return probs, labels, indices, logits


def calibrate_threshold(trainer: L.Trainer, datamodule: L.LightningDataModule, ckpt_path: str,
                        settings: dict[str, Any], out_dir: Path, calibration: dict[str, Any] | None = None,
                        interval_settings: dict[str, Any] | None = None) -> tuple[L.LightningModule, dict[str, Any]]:
    """Fit the temperature (when `calibration["temperature"]`), then choose the threshold on
    validation for `ckpt_path`, write both into that file and `val_metrics.json` (the metrics
    at the chosen threshold with bootstrap intervals by patient, the point estimates at 0.5,
    ECE and Brier score before and after the temperature).
    Returns the checkpoint's module (with that threshold and temperature) and the
    validation report at the chosen threshold."""
    cal = {**CALIBRATION_DEFAULTS, **(calibration or {})}
    boot = {**INTERVAL_DEFAULTS, **(interval_settings or {})}
    rule = rule_options(settings)  # a wrong threshold.* fails here, before any scoring
    raw = Predictor.from_checkpoint(ckpt_path, temperature=1.0,  # fit on the raw logits, whatever is stored
                                     require_calibration=False)
    probs, labels, indices, logits = predict_logits(trainer, raw.lightning_module(), datamodule, "val")
    temperature = None
    scaled_logits = logits.double()
    if cal["temperature"]:
        temperature = st.fit_temperature(logits.double().numpy(), labels.numpy())
        raw_probs = probs
        # exactly what the scoring paths compute (`TemperatureScaled`): float32 logit / float32 T
        probs = torch.sigmoid(logits.float() / torch.tensor(temperature, dtype=torch.float32))
        scaled_logits = logits.double() / temperature
    threshold = choose_threshold(probs, labels, logits=scaled_logits, **rule)
    paths = [datamodule.paths["val"][i] for i in indices.tolist()]
    at_half = report(probs, labels, 0.5)
    chosen = report(probs, labels, threshold)
    chosen["ci95"], meta = intervals(probs, labels, threshold, paths, resamples=int(boot["resamples"]),
                                     seed=int(boot["seed"]))
    calib = calibration_summary(probs.numpy(), labels.numpy(), bins=int(cal["ece_bins"]),
                                temperature=temperature or 1.0,
                                probs_before=raw_probs.numpy() if temperature else None)
    calib["nll"] = st.binary_nll(logits.double().numpy() / (temperature or 1.0), labels.numpy())
    if temperature:
        calib["before_temperature"]["nll"] = st.binary_nll(logits.double().numpy(), labels.numpy())
    chosen["calibration"] = calib
    # the precision the threshold was chosen under: eval.py and predict.py score with it by default
    store_calibration(ckpt_path, threshold, method=rule["method"], val_report=chosen,
                      precision=str(trainer.precision), temperature_value=temperature,
                      val_roc=roc_points(probs, labels))
    module = Predictor.from_checkpoint(ckpt_path).lightning_module()  # with the stored threshold and temperature
    summary = {"checkpoint": str(ckpt_path), "epoch": raw.recipe["epoch"],
               "threshold_method": rule["method"], "at_threshold": chosen, "at_0.5": at_half,
               "calibration": calib, "bootstrap": meta}
    (out_dir / "val_metrics.json").write_text(json.dumps(summary, indent=2))
    log.info("Validation threshold (%s) = %.4f: accuracy %.4f, F1 %.4f, AUROC %.4f", rule["method"], threshold,
             chosen["accuracy"], chosen["f1"], chosen["auroc"])
    if temperature:
        before = calib["before_temperature"]
        log.info("Temperature %.3f fitted on validation: ECE %.4f -> %.4f, Brier %.4f -> %.4f (%d bins)", temperature,
                 before["ece"], calib["ece"], before["brier"], calib["brier"], calib["bins"])
    return module, chosen
