"""After training: score the validation split with the best checkpoint, choose the
decision threshold there and store it in that checkpoint for eval.py and predict.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pneumonia.evaluation.metrics import report
from pneumonia.evaluation.threshold import choose_threshold
from pneumonia.inference import Predictor
from pneumonia.inference.checkpoint import store_calibration

log = logging.getLogger(__name__)


def predict_split(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
                  split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities, labels, indices) of `split`, through the module's own device path."""
    datamodule.predict_split = split
    batches = trainer.predict(module, datamodule=datamodule)
    probs, labels, indices = (torch.cat(t) for t in zip(*batches))
    return probs, labels, indices


def calibrate_threshold(trainer: L.Trainer, datamodule: L.LightningDataModule, ckpt_path: str,
                        settings: dict[str, Any], out_dir: Path) -> tuple[L.LightningModule, dict[str, Any]]:
    """Choose the threshold on validation for `ckpt_path`, write it into that file and
    `val_metrics.json`. Returns the checkpoint's module (with that threshold) and the
    validation report at the chosen threshold."""
    predictor = Predictor.from_checkpoint(ckpt_path)
    module = predictor.lightning_module()
    probs, labels, _ = predict_split(trainer, module, datamodule, "val")
    threshold = choose_threshold(probs, labels, settings["method"], settings["value"],
                                 settings["target_sensitivity"])
    at_half = report(probs, labels, 0.5)
    chosen = report(probs, labels, threshold)
    # the precision the threshold was chosen under: eval.py and predict.py score with it by default
    store_calibration(ckpt_path, threshold, method=settings["method"], val_report=chosen,
                      precision=str(trainer.precision))
    module.threshold.fill_(threshold)
    summary = {"checkpoint": str(ckpt_path), "epoch": predictor.recipe["epoch"],
               "threshold_method": settings["method"], "at_threshold": chosen, "at_0.5": at_half}
    (out_dir / "val_metrics.json").write_text(json.dumps(summary, indent=2))
    log.info("Validation threshold (%s) = %.4f: accuracy %.4f, F1 %.4f, AUROC %.4f",
             settings["method"], threshold, chosen["accuracy"], chosen["f1"], chosen["auroc"])
    return module, chosen
