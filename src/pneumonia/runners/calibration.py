"""After training: score the validation split with the best checkpoint, optionally fit a
temperature there, choose the decision threshold and store both in that checkpoint for
eval.py and predict.py.

Order matters: the temperature T is fitted first (on the validation logits, minimising the
NLL of sigmoid(logit / T)), then the threshold is chosen on the temperature-scaled
probabilities, which are what every later scoring path (the `Predictor`) produces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch

from pneumonia.evaluation import statistics as st
from pneumonia.evaluation.analysis import calibration_summary, intervals
from pneumonia.evaluation.artefacts import ValMetrics, write_val_metrics
from pneumonia.evaluation.calibration import CALIBRATION_DEFAULTS, INTERVAL_DEFAULTS, check_settings, predict_logits
from pneumonia.evaluation.metrics import report
from pneumonia.evaluation.threshold import choose_threshold, roc_points, rule_options
from pneumonia.inference import Predictor
from pneumonia.inference.checkpoint import data_settings, load_checkpoint, saved_epoch, store_calibration
from pneumonia.inference.checkpoint import threshold as stored_threshold
from pneumonia.inference.predictor import with_temperature
from pneumonia.integrity import stored_digest

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


@dataclass(frozen=True)
class Calibrated:
    """What calibration chose, stored and scored: the record `calibrate_threshold` and
    `calibrate_scores` return. `scores` are the labelled images as the stored checkpoint scores
    them (P = sigmoid(logit / T), logits / T, in float32 as `TemperatureScaled` computes
    them): scoring them again through the Predictor gives the same tensors, so the
    cross-validation's out-of-fold scores are these (`ensemble.cv.score_out_of_fold`)."""

    checkpoint: str
    threshold: float  # as stored: the float32 buffer's value (the Predictor's threshold)
    method: str
    temperature: float | None  # None: none fitted
    val_report: dict[str, Any]  # the metrics at `threshold` (val_metrics.json's `at_threshold`)
    scores: Scores
    epoch: int | None  # the checkpoint's (0-based, as Lightning saved it)
    digest: str | None  # the weights checksum of the checkpoint as written (`pneumonia.integrity`)
    data_settings: dict[str, Any]  # the checkpoint's DataModule arguments
    # the LightningModule with the stored threshold and temperature, when calibration built one
    # (`calibrate_threshold`: the module that scored); None once the record is kept (`TrainResult`)
    module: L.LightningModule | None = field(default=None, repr=False, compare=False)


def calibrate_threshold(
    trainer: L.Trainer,
    datamodule: ChestXrayDataModule,
    ckpt_path: str,
    settings: dict[str, Any],
    out_dir: Path,
    calibration: dict[str, Any] | None = None,
    interval_settings: dict[str, Any] | None = None,
    loaded: dict[str, Any] | None = None,
) -> Calibrated:
    """Fit the temperature (when `calibration["temperature"]`), then choose the threshold on
    validation for `ckpt_path`, write both into that file and `val_metrics.json` (the metrics
    at the chosen threshold with bootstrap intervals by patient, the point estimates at 0.5,
    ECE and Brier score before and after the temperature).
    Returns the record, with the one LightningModule built here: it scored validation (raw
    logits) and then gets the chosen threshold and temperature (`Calibrated.module`).
    `loaded`: the checkpoint as `load_checkpoint(ckpt_path)` gave it, when the caller holds
    it; else the file is read here, once."""
    rule_options(settings)  # a wrong threshold.* fails here, before any scoring
    loaded = load_checkpoint(ckpt_path) if loaded is None else loaded
    raw = Predictor.from_checkpoint(ckpt_path, require_calibration=False, loaded=loaded)
    # fit on the raw logits, whatever temperature is stored
    module = raw.lightning_module(temperature=1.0)
    probs, labels, indices, logits = predict_logits(trainer, module, datamodule, "val")
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
        loaded=loaded,
        module=module,
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
    loaded: dict[str, Any] | None = None,
    module: L.LightningModule | None = None,
) -> Calibrated:
    """`calibrate_threshold` on scores already made: fit the temperature (when
    `calibration["temperature"]`) and choose the threshold on `scores`, store both in
    `ckpt_path` (with `precision`, the one the scores were made under, and `shift_reference`)
    and write `val_metrics.json` into `out_dir`. `loaded`: the checkpoint as
    `load_checkpoint(ckpt_path)` gave it, when the caller holds it (the file is then only
    written). `module`: the LightningModule that made `scores` (temperature 1), given the
    chosen threshold and temperature here and returned in the record; none is built."""
    cal = {**CALIBRATION_DEFAULTS, **(calibration or {})}
    boot = {**INTERVAL_DEFAULTS, **(interval_settings or {})}
    rule = rule_options(settings)
    probs, labels, logits, paths = scores.probs, scores.labels, scores.logits, scores.paths
    temperature = None
    scaled_logits = logits.double()
    held_out = Scores(probs, labels, logits, paths)  # as the stored checkpoint scores them
    if cal["temperature"]:
        temperature = st.fit_temperature(logits.double().numpy(), labels.numpy())
        raw_probs = probs
        # exactly what the scoring paths compute (`TemperatureScaled`): float32 logit / float32 T
        scaled = logits.float() / torch.tensor(temperature, dtype=torch.float32)
        probs = torch.sigmoid(scaled)
        scaled_logits = logits.double() / temperature
        held_out = Scores(probs, labels, scaled, paths)
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
    written = store_calibration(
        ckpt_path,
        threshold,
        method=rule["method"],
        val_report=chosen,
        precision=precision,
        temperature_value=temperature,
        val_roc=roc_points(probs, labels),
        shift_reference=shift_reference,
        loaded=loaded,
    )
    if module is not None:
        # the module the stored checkpoint gives, without building another: the threshold
        # buffer is float32, as stored; the temperature wraps the net as the Predictor does
        cast(Any, module.threshold).fill_(float(threshold))
        module.net = with_temperature(cast(Any, module).net, temperature or 1.0).to(module.device)
    epoch = saved_epoch(written)
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
    return Calibrated(
        checkpoint=str(ckpt_path),
        threshold=stored_threshold(written),  # as stored (float32) and as the Predictor gives it
        method=str(rule["method"]),
        temperature=temperature,
        val_report=chosen,
        scores=held_out,
        epoch=epoch,
        digest=stored_digest(written),
        data_settings=data_settings(written),
        module=module,
    )


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
    from pneumonia.inference.checkpoint import ensemble_info

    ckpt_path = Path(ckpt_path).expanduser()
    loaded = load_checkpoint(ckpt_path)  # a clear error for a bad file; the one read of it
    raw = Predictor.from_checkpoint(ckpt_path, require_calibration=False, loaded=loaded)  # and for a bad network
    if ensemble_info(loaded).get("cv"):
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
    return calibrate_threshold(
        trainer,
        datamodule,
        str(ckpt_path),
        run["threshold"],
        out_dir,
        calibration=run["calibration"],
        interval_settings=run["intervals"],
        loaded=loaded,
    ).val_report
