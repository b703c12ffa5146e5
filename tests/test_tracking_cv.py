"""MLflow and cross-validation (`cv.folds=K logger=mlflow`): one parent run for the
cross-validation holding the means over the folds, the out-of-fold AUROC and the files the
cross-validation wrote, each fold's run nested under it; a resumed cross-validation goes on in
the same parent. Read back through MlflowClient from a SQLite store in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pneumonia.data.synthetic import make_chest_xray_tree
from tests.helpers import artifact_paths, train_cfg

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.usefixtures("one_thread")

from mlflow import MlflowClient  # noqa: E402

FOLDS = 2
RECIPE = (
    f"cv.folds={FOLDS}",
    "trainer.max_epochs=1",
    "trainer.precision=32-true",
    "logger=mlflow",
    "mlflow.log_checkpoint=false",
    "callbacks.gradcam=null",
    "intervals.resamples=0",
    "data.image_size=32",
    "model.depth=2",
    "model.widths=[4,8]",
    "model.dense_units=8",
)


@pytest.mark.slow
def test_a_cross_validation_is_the_parent_run_of_its_folds(tmp_path):
    from pneumonia.ensemble.cv import train

    root = make_chest_xray_tree(tmp_path / "data", {"train": (12, 12), "test": (4, 4)})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "cv"
    cfg = train_cfg(root, out, *RECIPE, f"mlflow.tracking_uri={uri}")
    score, _ = train(cfg)

    info = json.loads((out / "mlflow_run.json").read_text())
    assert info["cv"] is True and info["tracking_uri"] == uri
    client = MlflowClient(uri)
    parent_id = info["run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == f"train/{out.name}"
    assert parent.data.tags["pneumonia.cv_dir"] == str(out.resolve()) and parent.data.tags["cv.folds"] == str(FOLDS)
    assert len(parent.data.tags["git.commit"]) == 40 and parent.data.params["cv.folds"] == str(FOLDS)

    # each fold's own run, nested under the parent
    runs = client.search_runs([info["experiment_id"]])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(runs) == FOLDS + 1 and len(children) == FOLDS
    fold_runs = {json.loads((out / f"fold_{k}" / "mlflow_run.json").read_text())["run_id"] for k in range(FOLDS)}
    assert {r.info.run_id for r in children} == fold_runs
    assert {r.data.params["data.fold"] for r in children} == {str(k) for k in range(FOLDS)}

    # the parent's numbers are cv_summary.json's, not computed again
    summary = json.loads((out / "cv_summary.json").read_text())
    metrics = parent.data.metrics
    assert metrics["cv/best_score_mean"] == pytest.approx(summary["best_score"]["mean"]) == pytest.approx(score)
    assert metrics["cv/best_score_sd"] == pytest.approx(summary["best_score"]["sd"])
    assert metrics["cv/oof_auroc"] == pytest.approx(summary["out_of_fold"]["auroc"])
    for key in ("auroc", "accuracy", "f1", "threshold"):
        assert metrics[f"cv/{key}_mean"] == pytest.approx(summary["mean"][key])
        assert metrics[f"cv/{key}_sd"] == pytest.approx(summary["sd"][key])
    files = set(artifact_paths(client, parent_id))
    assert {"cv_summary.json", "folds.csv", "oof_predictions.csv", "train_summary.json"} <= files
    local = mlflow.artifacts.download_artifacts(
        run_id=parent_id, artifact_path="oof_predictions.csv", tracking_uri=uri, dst_path=str(tmp_path / "dl")
    )
    assert Path(local).read_bytes() == (out / "oof_predictions.csv").read_bytes()

    # resumed: the same parent, no new runs
    train(train_cfg(root, out, *RECIPE, f"mlflow.tracking_uri={uri}", f"resume={out}"))
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == parent_id
    assert len(client.search_runs([info["experiment_id"]])) == FOLDS + 1
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert len(client.get_metric_history(parent_id, "cv/oof_auroc")) == 2


def test_a_fold_nests_under_the_cross_validation_of_its_folder(tmp_path):
    from pneumonia.tracking.mlflow_run import _cv_parent

    uri = "sqlite:////x/mlflow.db"
    fold = tmp_path / "fold_0"
    fold.mkdir()
    assert _cv_parent(fold, uri) is None
    (tmp_path / "mlflow_run.json").write_text(json.dumps({"tracking_uri": uri, "run_id": "p1"}))
    assert _cv_parent(fold, uri) is None  # an ordinary run's folder above it: no parent
    (tmp_path / "mlflow_run.json").write_text(json.dumps({"tracking_uri": uri, "run_id": "p1", "cv": True}))
    assert _cv_parent(fold, uri) == "p1"
    assert _cv_parent(fold, "sqlite:////y/mlflow.db") is None  # another store


@pytest.mark.slow
def test_a_stopped_cross_validation_leaves_its_parent_failed_or_killed(tmp_path, monkeypatch):
    from pneumonia.ensemble import cv
    from pneumonia.tracking.mlflow_run import end_cv_run_early

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("cv")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    end_cv_run_early(run_dir, interrupted=False)  # no parent run: nothing to do, no error
    parent = client.create_run(experiment).info.run_id
    (run_dir / "mlflow_run.json").write_text(json.dumps({"tracking_uri": uri, "run_id": parent, "cv": True}))

    def stop(error):
        def folds(*args, **kwargs):
            raise error

        return folds

    monkeypatch.setattr(cv, "check_cv_config", lambda cfg: None)
    monkeypatch.setattr(cv, "start_cv_run", lambda cfg, run_dir: None)
    cfg = train_cfg(tmp_path / "data", run_dir)
    monkeypatch.setattr(cv, "_train_folds", stop(RuntimeError("a fold broke")))
    with pytest.raises(RuntimeError, match="a fold broke"):
        cv.train(cfg)
    assert client.get_run(parent).info.status == "FAILED"
    monkeypatch.setattr(cv, "_train_folds", stop(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        cv.train(cfg)
    assert client.get_run(parent).info.status == "KILLED"
