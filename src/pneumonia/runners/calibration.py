"""After training: score the validation split with the best checkpoint, optionally fit a
temperature there, choose the decision threshold and store both in that checkpoint for
eval.py and predict.py.

Order matters: the temperature T is fitted first (on the validation logits, minimising the
NLL of sigmoid(logit / T)), then the threshold is chosen on the temperature-scaled
probabilities, which are what every later scoring path (the `Predictor`) produces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from pneumonia.evaluation import statistics as st
from pneumonia.evaluation.analysis import calibration_summary, intervals
from pneumonia.evaluation.artefacts import ValMetrics, write_val_metrics
from pneumonia.evaluation.calibration import CALIBRATION_DEFAULTS, INTERVAL_DEFAULTS, check_settings, predict_logits
from pneumonia.evaluation.metrics import report
from pneumonia.evaluation.threshold import choose_threshold, roc_points, rule_options
from pneumonia.inference import Predictor
from pneumonia.inference.checkpoint import store_calibration

if TYPE_CHECKING:
    from pneumonia.data.datamodule import ChestXrayDataModule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    """A model's scores of labelled images, what a threshold is chosen on: the validation
    split scored by the checkpoint (`calibrate_threshold`), or out-of-fold predictions
    (cross-validation: each image scored by the fold model that never trained on it)."""

    probs: torch.Tensor  # P(pneumonia)
    labels: torch.Tensor
    logits: torch.Tensor  # the logits behind `probs` (before a temperature fitted on these scores)
    paths: list[str]


def calibrate_threshold(
    trainer: L.Trainer,
    datamodule: ChestXrayDataModule,
    ckpt_path: str,
    settings: dict[str, Any],
    out_dir: Path,
    calibration: dict[str, Any] | None = None,
    interval_settings: dict[str, Any] | None = None,
    predictor: Predictor | None = None,
) -> tuple[L.LightningModule, dict[str, Any]]:
    """Fit the temperature (when `calibration["temperature"]`), then choose the threshold on
    validation for `ckpt_path`, write both into that file and `val_metrics.json` (the metrics
    at the chosen threshold with bootstrap intervals by patient, the point estimates at 0.5,
    ECE and Brier score before and after the temperature).
    Returns the checkpoint's module (with that threshold and temperature) and the
    validation report at the chosen threshold. `predictor`: the Predictor of `ckpt_path`
    already loaded by the caller (read from the file when None)."""
    rule_options(settings)  # a wrong threshold.* fails here, before any scoring
    raw = predictor or Predictor.from_checkpoint(ckpt_path, require_calibration=False)
    # fit on the raw logits, whatever temperature is stored
    probs, labels, indices, logits = predict_logits(trainer, raw.lightning_module(temperature=1.0), datamodule, "val")
    paths = [datamodule.paths["val"][i] for i in indices.tolist()]
    return calibrate_scores(
        ckpt_path,
        Scores(probs, labels, logits, paths),
        settings,
        out_dir,
        calibration=calibration,
        interval_settings=interval_settings,
        precision=str(trainer.precision),
        shift_reference=_shift_reference(datamodule),
        predictor=raw,
    )


def calibrate_scores(
    ckpt_path: str,
    scores: Scores,
    settings: dict[str, Any],
    out_dir: Path,
    *,
    calibration: dict[str, Any] | None = None,
    interval_settings: dict[str, Any] | None = None,
    precision: str,
    shift_reference: dict[str, Any] | None,
    predictor: Predictor | None = None,
) -> tuple[L.LightningModule, dict[str, Any]]:
    """`calibrate_threshold` on scores already made: fit the temperature (when
    `calibration["temperature"]`) and choose the threshold on `scores`, store both in
    `ckpt_path` (with `precision`, the one the scores were made under, and `shift_reference`)
    and write `val_metrics.json` into `out_dir`. `predictor`: `ckpt_path`'s Predictor when
    the caller holds it (the returned module is built from its weights, not read again)."""
    cal = {**CALIBRATION_DEFAULTS, **(calibration or {})}
    boot = {**INTERVAL_DEFAULTS, **(interval_settings or {})}
    rule = rule_options(settings)
    probs, labels, logits, paths = scores.probs, scores.labels, scores.logits, scores.paths
    temperature = None
    scaled_logits = logits.double()
    if cal["temperature"]:
        temperature = st.fit_temperature(logits.double().numpy(), labels.numpy())
        raw_probs = probs
        # exactly what the scoring paths compute (`TemperatureScaled`): float32 logit / float32 T
        probs = torch.sigmoid(logits.float() / torch.tensor(temperature, dtype=torch.float32))
        scaled_logits = logits.double() / temperature
    threshold = choose_threshold(probs, labels, logits=scaled_logits, **rule)
    at_half = report(probs, labels, 0.5)
    chosen: dict[str, Any] = report(probs, labels, threshold)
    chosen["ci95"], meta = intervals(
        probs, labels, threshold, paths, resamples=int(boot["resamples"]), seed=int(boot["seed"])
    )
    calib = calibration_summary(
        probs.numpy(),
        labels.numpy(),
        bins=int(cal["ece_bins"]),
        temperature=temperature or 1.0,
        probs_before=raw_probs.numpy() if temperature else None,
    )
    calib["nll"] = st.binary_nll(logits.double().numpy() / (temperature or 1.0), labels.numpy())
    if temperature:
        calib["before_temperature"]["nll"] = st.binary_nll(logits.double().numpy(), labels.numpy())
    chosen["calibration"] = calib
    # the precision the threshold was chosen under: eval.py and predict.py score with it by default
    store_calibration(
        ckpt_path,
        threshold,
        method=rule["method"],
        val_report=chosen,
        precision=precision,
        temperature_value=temperature,
        val_roc=roc_points(probs, labels),
        shift_reference=shift_reference,
    )
    if predictor is not None:
        # with the stored threshold and temperature: the module the stored checkpoint gives, built
        # from the weights already loaded (the threshold buffer is float32, as stored)
        module = predictor.lightning_module(threshold=threshold, temperature=temperature or 1.0)
        epoch = predictor.recipe.epoch
    else:
        stored = Predictor.from_checkpoint(ckpt_path)
        module, epoch = stored.lightning_module(), stored.recipe.epoch
    write_val_metrics(
        out_dir,
        ValMetrics(
            checkpoint=str(ckpt_path),
            epoch=epoch,
            threshold_method=rule["method"],
            at_threshold=chosen,
            at_half=at_half,
            calibration=calib,
            bootstrap=meta,
        ),
    )
    log.info(
        "Validation threshold (%s) = %.4f: accuracy %.4f, F1 %.4f, AUROC %.4f",
        rule["method"],
        threshold,
        chosen["accuracy"],
        chosen["f1"],
        chosen["auroc"],
    )
    if temperature:
        before = calib["before_temperature"]
        log.info(
            "Temperature %.3f fitted on validation: ECE %.4f -> %.4f, Brier %.4f -> %.4f (%d bins)",
            temperature,
            before["ece"],
            calib["ece"],
            before["brier"],
            calib["brier"],
            calib["bins"],
        )
    return module, chosen


def _shift_reference(datamodule: L.LightningDataModule) -> dict[str, Any] | None:
    """Statistics of the decoded validation images, the reference eval.py and predict.py
    compare a folder with (None where the DataModule holds no validation images)."""
    split = getattr(datamodule, "splits", {}).get("val")
    return None if split is None else shift_reference_of(split)


def shift_reference_of(split: Any) -> dict[str, Any]:
    """Statistics of a split's decoded images (an `IndexedImages`), the shift reference."""
    from pneumonia.data.stress import validation_images
    from pneumonia.evaluation.shift import image_reference

    images, labels = validation_images(split)
    return image_reference(images, labels)


# ---- calibrate a checkpoint (again): python -m pneumonia.tools.calibrate CKPT ------------------------
def run_settings(ckpt_path: Path) -> dict[str, Any]:
    """The `threshold`, `calibration`, `intervals` and `trainer.precision` settings of the run
    that wrote `ckpt_path` (its `.hydra/config.yaml`, beside `checkpoints/`); the defaults
    when there is none."""
    from omegaconf import OmegaConf

    from pneumonia.config.plain import to_dict

    config = ckpt_path.parent.parent / ".hydra" / "config.yaml"
    cfg = to_dict(OmegaConf.load(config), resolve=False) if config.is_file() else {}
    trainer = cfg.get("trainer") or {}
    precision = trainer.get("precision")
    return {
        "threshold": cfg.get("threshold") or {},
        "calibration": cfg.get("calibration"),
        "intervals": cfg.get("intervals"),
        "precision": precision if isinstance(precision, str) and "${" not in precision else None,
    }


def recalibrate(ckpt_path: str | Path, *, data_root: str | None = None, accelerator: str = "auto") -> dict[str, Any]:
    """Choose `ckpt_path`'s threshold (and temperature, when its run fitted one) on its
    validation split, as train.py does after training, and store them in it. The split is the
    one the stored data settings define (`data_root`: the data moved). Returns the
    validation report at the chosen threshold; val_metrics.json goes beside `checkpoints/`."""
    from pneumonia.data.datamodule import ChestXrayDataModule
    from pneumonia.hardware import auto_precision

    from pneumonia.errors import CheckpointError
    from pneumonia.inference.checkpoint import ensemble_info, load_checkpoint

    ckpt_path = Path(ckpt_path).expanduser()
    raw = Predictor.from_checkpoint(ckpt_path, require_calibration=False)  # a clear error for a bad file
    if ensemble_info(load_checkpoint(ckpt_path)).get("cv"):
        raise CheckpointError(
            f"'{ckpt_path}' is the ensemble of a cross-validation's fold models: every training image was "
            "trained on by one of them, so its threshold was chosen on their out-of-fold scores; build it again "
            "with python train.py <its overrides> cv.ensemble=true resume=<its run folder>"
        )
    run = run_settings(ckpt_path)
    check_settings(run["calibration"], run["intervals"], threshold_settings=run["threshold"])
    settings = dict(raw.data_settings)
    if data_root is not None:
        settings["root"] = str(data_root)
    settings["bad_image_report"] = None
    datamodule = ChestXrayDataModule(**settings)
    datamodule.check_layout(("fit",))
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=run["precision"] or auto_precision(accelerator),  # type: ignore[arg-type]  # a precision string the config checks; Lightning types it as Literals
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    out_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    _, val_report = calibrate_threshold(
        trainer,
        datamodule,
        str(ckpt_path),
        run["threshold"],
        out_dir,
        calibration=run["calibration"],
        interval_settings=run["intervals"],
        predictor=raw,
    )
    return val_report
