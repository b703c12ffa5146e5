"""train_summary.json and val_metrics.json: one owner (`pneumonia.evaluation.artefacts`), typed,
versioned; files written before the version read all the same."""

import dataclasses
import json

import pytest

from pneumonia.errors import UserError
from pneumonia.evaluation.artefacts import (
    FORMAT_VERSION,
    ArtefactError,
    TrainSummary,
    ValMetrics,
    read_train_summary,
    read_val_metrics,
    write_train_summary,
    write_val_metrics,
)


def test_train_summary_round_trips_with_a_version(tmp_path):
    summary = TrainSummary(
        best_checkpoint="ckpt/best.ckpt",
        monitor="val/auroc",
        best_score=0.9,
        epochs=3,
        train_minutes=1.5,
        train_seconds=90.0,
        session_train_seconds=45.0,
        val={"auroc": 0.9, "threshold": 0.4},
    )
    path = write_train_summary(tmp_path, summary)
    stored = json.loads(path.read_text())
    assert list(stored)[0] == "format_version" and stored["format_version"] == FORMAT_VERSION
    assert "trial" not in stored and "members" not in stored  # written only where they apply
    assert read_train_summary(tmp_path) == summary
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.epochs = 4  # type: ignore[misc]


def test_a_sweep_job_keeps_trial_and_a_null_pruned_epoch(tmp_path):
    write_train_summary(tmp_path, TrainSummary("b.ckpt", "val/auroc", 0.9, 2, 0.1, trial=3))
    stored = json.loads((tmp_path / "train_summary.json").read_text())
    assert stored["trial"] == 3 and "pruned_at_epoch" in stored and stored["pruned_at_epoch"] is None


def test_an_older_train_summary_without_a_version_reads(tmp_path):
    (tmp_path / "train_summary.json").write_text(
        json.dumps(
            {
                "best_checkpoint": "b.ckpt",
                "monitor": "val/loss",
                "best_score": 0.2,
                "epochs": 5,
                "members": 2,
                "train_minutes": None,
                "val": {"auroc": 0.8},
                "something_newer": 1,  # a key this reader does not know: ignored
            }
        )
    )
    summary = read_train_summary(tmp_path)
    assert summary.format_version == 0 and summary.members == 2 and summary.val == {"auroc": 0.8}
    assert summary.trial is None and summary.pruned_at_epoch is None


def test_val_metrics_round_trips_and_keeps_at_0_5(tmp_path):
    metrics = ValMetrics("b.ckpt", 1, "youden", {"auroc": 0.9}, {"auroc": 0.9, "threshold": 0.5}, {"ece": 0.1}, {})
    stored = json.loads(write_val_metrics(tmp_path, metrics).read_text())
    assert list(stored) == [
        *("format_version", "checkpoint", "epoch", "threshold_method"),
        *("at_threshold", "at_0.5", "calibration", "bootstrap"),
    ]
    assert read_val_metrics(tmp_path) == metrics
    del stored["format_version"]  # as written before the version
    (tmp_path / "val_metrics.json").write_text(json.dumps(stored))
    assert dataclasses.replace(read_val_metrics(tmp_path), format_version=FORMAT_VERSION) == metrics


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_a_missing_or_damaged_file_is_one_line(tmp_path, content):
    if content is not None:
        (tmp_path / "train_summary.json").write_text(content)
    with pytest.raises(ArtefactError, match="train_summary.json") as err:
        read_train_summary(tmp_path)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)
