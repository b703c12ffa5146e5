"""Calibration's settings and scoring: `check_settings` for `calibration.*`/`intervals.*`,
`predict_logits` (a split's scores through the module's own device path). The step that
chooses the threshold and stores it in the checkpoint is `pneumonia.runners.calibration`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from pneumonia.evaluation import statistics as st
from pneumonia.evaluation.threshold import check_threshold_settings

if TYPE_CHECKING:
    from pneumonia.data.datamodule import ChestXrayDataModule

CALIBRATION_DEFAULTS, INTERVAL_DEFAULTS = st.CALIBRATION_DEFAULTS, st.INTERVAL_DEFAULTS


def check_settings(
    calibration: dict[str, Any] | None,
    interval_settings: dict[str, Any] | None,
    threshold_settings: dict[str, Any] | None = None,
) -> None:
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
    for key, value, low in (
        ("calibration.ece_bins", cal["ece_bins"], 1),
        ("intervals.resamples", boot["resamples"], 0),
        ("intervals.seed", boot["seed"], 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{key}={value!r} must be an integer >= {low}")


def predict_logits(
    trainer: L.Trainer, module: L.LightningModule, datamodule: ChestXrayDataModule, split: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities, labels, indices, logits) of `split`, through the module's own device path."""
    datamodule.predict_split = split
    batches = trainer.predict(module, datamodule=datamodule)
    assert batches is not None  # return_predictions defaults to true
    probs, labels, indices, logits = (torch.cat(t) for t in zip(*batches))
    return probs, labels, indices, logits
