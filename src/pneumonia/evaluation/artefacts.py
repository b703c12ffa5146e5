"""A training run's JSON artefacts, the one module that writes and reads them (no torch here):

- `train_summary.json` (`TrainSummary`): written by train.py when a run ends and by an
  ensemble build; read by sweep_summary, the ensemble (a member's training minutes; whether a
  member finished) and MLflow (logged as it is).
- `val_metrics.json` (`ValMetrics`): written by calibration after training (the validation
  report at the chosen threshold, at 0.5, calibration and bootstrap details); read by the
  ensemble's training and MLflow.

Both are written with `format_version` (`FORMAT_VERSION`) as their first key; a file written
before it (no `format_version`) reads as version 0 with the same fields. Keys a reader does
not know are ignored. predictions.csv has its own owner, `pneumonia.evaluation.predictions`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumonia.errors import UserError

TRAIN_SUMMARY = "train_summary.json"
VAL_METRICS = "val_metrics.json"
FORMAT_VERSION = 1


class ArtefactError(UserError):
    """A train_summary.json or val_metrics.json that cannot be read (damaged, not an object)."""


@dataclass(frozen=True, slots=True)
class TrainSummary:
    """How a run ended: its best checkpoint and score, epochs, time and validation report.

    `train_seconds`/`session_train_seconds`: train.py's (all sessions of a resumed run, this
    process alone); `trial`/`pruned_at_epoch`: a job of an Optuna sweep (None: not pruned);
    `members`: an ensemble's member count; `cv`: a cross-validation's folds and standard
    deviations (its `best_score` and `val` are the means over the folds). Each written only
    where it applies."""

    best_checkpoint: str | None
    monitor: str | None
    best_score: float | None
    epochs: int | None
    train_minutes: float | None
    val: dict[str, Any] = field(default_factory=dict)
    train_seconds: float | None = None
    session_train_seconds: float | None = None
    trial: int | None = None
    pruned_at_epoch: int | None = None
    members: int | None = None
    cv: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "best_checkpoint": self.best_checkpoint,
            "monitor": self.monitor,
            "best_score": self.best_score,
            "epochs": self.epochs,
        }
        if self.members is not None:
            out["members"] = self.members
        out["train_minutes"] = self.train_minutes
        for key in ("train_seconds", "session_train_seconds"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["val"] = self.val
        if self.cv is not None:
            out["cv"] = self.cv
        if self.trial is not None:  # a sweep's job: both keys, pruned_at_epoch null when it was not
            out.update(trial=self.trial, pruned_at_epoch=self.pruned_at_epoch)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSummary:
        val = data.get("val")
        return cls(
            best_checkpoint=data.get("best_checkpoint"),
            monitor=data.get("monitor"),
            best_score=data.get("best_score"),
            epochs=data.get("epochs"),
            train_minutes=data.get("train_minutes"),
            val=dict(val) if isinstance(val, dict) else {},
            train_seconds=data.get("train_seconds"),
            session_train_seconds=data.get("session_train_seconds"),
            trial=data.get("trial"),
            pruned_at_epoch=data.get("pruned_at_epoch"),
            members=data.get("members"),
            cv=dict(data["cv"]) if isinstance(data.get("cv"), dict) else None,
            format_version=int(data.get("format_version", 0)),
        )


@dataclass(frozen=True, slots=True)
class ValMetrics:
    """Calibration's validation results for one checkpoint: the report at the chosen
    threshold (`at_threshold`, with ci95 and calibration), at 0.5 (`at_half`, the file's
    `at_0.5`), the calibration summary and the bootstrap's details."""

    checkpoint: str
    epoch: int | None
    threshold_method: str | None
    at_threshold: dict[str, Any]
    at_half: dict[str, Any]
    calibration: dict[str, Any]
    bootstrap: dict[str, Any]
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "checkpoint": self.checkpoint,
            "epoch": self.epoch,
            "threshold_method": self.threshold_method,
            "at_threshold": self.at_threshold,
            "at_0.5": self.at_half,
            "calibration": self.calibration,
            "bootstrap": self.bootstrap,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValMetrics:
        def part(key: str) -> dict[str, Any]:
            value = data.get(key)
            return dict(value) if isinstance(value, dict) else {}

        return cls(
            checkpoint=str(data.get("checkpoint", "")),
            epoch=data.get("epoch"),
            threshold_method=data.get("threshold_method"),
            at_threshold=part("at_threshold"),
            at_half=part("at_0.5"),
            calibration=part("calibration"),
            bootstrap=part("bootstrap"),
            format_version=int(data.get("format_version", 0)),
        )


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtefactError(f"'{path}' does not exist") from None
    except (OSError, ValueError) as err:
        raise ArtefactError(f"'{path}' cannot be read ({err})") from None
    if not isinstance(data, dict):
        raise ArtefactError(f"'{path}' holds no JSON object")
    return data


def train_summary_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / TRAIN_SUMMARY


def val_metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / VAL_METRICS


def write_train_summary(run_dir: str | Path, summary: TrainSummary) -> Path:
    """`<run_dir>/train_summary.json`."""
    return _write(train_summary_path(run_dir), summary.to_dict())


def read_train_summary(run_dir: str | Path) -> TrainSummary:
    """`<run_dir>/train_summary.json` (any version); an `ArtefactError` when missing or damaged."""
    return TrainSummary.from_dict(_read(train_summary_path(run_dir)))


def write_val_metrics(run_dir: str | Path, metrics: ValMetrics) -> Path:
    """`<run_dir>/val_metrics.json`."""
    return _write(val_metrics_path(run_dir), metrics.to_dict())


def read_val_metrics(run_dir: str | Path) -> ValMetrics:
    """`<run_dir>/val_metrics.json` (any version); an `ArtefactError` when missing or damaged."""
    return ValMetrics.from_dict(_read(val_metrics_path(run_dir)))
