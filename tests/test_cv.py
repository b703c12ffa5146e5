"""k-fold cross-validation by patient (`cv.folds`, `pneumonia.ensemble.cv`): the folds
(`grouped_folds`: no patient on two sides, classes stratified), the DataModule's fold split,
`cv.folds=3` on a small synthetic tree (folds.csv, oof_predictions.csv with every training
image once, cv_summary.json's mean and sd), the fold models' ensemble with its threshold
chosen on the out-of-fold scores (Predictor, eval, predict, the app's service), resuming, and the one-line
refusals of bad settings."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from pneumonia.data.datamodule import ChestXrayDataModule
from pneumonia.data.patients import grouped_folds, patient_id
from pneumonia.data.synthetic import make_chest_xray_tree
from pneumonia.errors import ConfigError, UserError
from pneumonia.evaluation.predictions import read_predictions
from pneumonia.evaluation.threshold import choose_threshold
from pneumonia.inference import Predictor
from pneumonia.inference.checkpoint import data_settings, ensemble_info, load_checkpoint
from pneumonia.runners.quick import check_or_fail
from tests.helpers import CV_FOLDS, TINY_CV, compose_cfg, train_cfg

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module

FOLDS = CV_FOLDS
RECIPE = TINY_CV


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """48 training images of 36 patients (every third patient has two), no val/, a small test/."""
    return make_chest_xray_tree(tmp_path_factory.mktemp("cv_data"), {"train": (24, 24), "test": (6, 6)})


@pytest.fixture(scope="module")
def run(root, tmp_path_factory) -> tuple[Path, float | None]:
    """`python train.py cv.folds=3 cv.ensemble=true`, made tiny."""
    from pneumonia.ensemble.cv import train

    out = tmp_path_factory.mktemp("cv_run")
    score, _ = train(train_cfg(root, out, *RECIPE))
    return out, score


def train_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "train").rglob("*") if p.is_file())


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---- the folds ------------------------------------------------------------------------------
def test_grouped_folds_keep_patients_whole_and_stratify_classes():
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for pid in range(60):
        cls = pid % 2
        for k in range(1 + (pid % 4 == 0)):
            paths.append(f"person{pid}_virus_{k}.jpeg" if cls else f"IM-{pid:04d}-{k:04d}.jpeg")
            labels.append(cls)
    order = rng.permutation(len(paths))
    paths, labels = [paths[i] for i in order], [labels[i] for i in order]
    fold = grouped_folds(paths, labels, 4, seed=7)
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3]
    by_patient = defaultdict(set)
    for p, k in zip(paths, fold.tolist()):
        by_patient[patient_id(p)].add(k)
    assert all(len(ks) == 1 for ks in by_patient.values())
    for cls in (0, 1):
        counts = np.bincount(fold[np.array(labels) == cls], minlength=4)
        assert counts.max() - counts.min() <= 2  # at most one patient's images apart
    assert np.array_equal(fold, grouped_folds(paths, labels, 4, seed=7))
    assert not np.array_equal(fold, grouped_folds(paths, labels, 4, seed=8))
    with pytest.raises(ValueError, match="31 folds, but class NORMAL has 30 patient"):
        grouped_folds(paths, labels, 31, seed=0)


def test_datamodule_validates_on_one_fold_and_moves_between_folds_without_decoding(root, tmp_path):
    dm = ChestXrayDataModule(root=str(root), image_size=32, cache_dir=None, folds=FOLDS, fold=1)
    dm.setup("fit")
    images = dm.splits["train"].images
    assigned = dm.fold_of()
    seen: list[str] = []
    for k in range(FOLDS):
        dm.use_fold(k)
        assert dm.splits["val"].images is images  # the one decoded tensor, indexed again
        val = {dm.paths["val"][i] for i in dm.splits["val"].indices.tolist()}
        train = {dm.paths["train"][i] for i in dm.splits["train"].indices.tolist()}
        assert not val & train and len(val | train) == 48 and val == {p for p, f in assigned.items() if f == k}
        assert not {patient_id(p) for p in val} & {patient_id(p) for p in train}
        assert dm.class_counts("val").tolist() in ([8, 8], [7, 9], [9, 7], [8, 9], [9, 8], [8, 7], [7, 8])
        seen += val
    assert sorted(seen) == sorted(str(p) for p in train_files(root))
    for bad in ({"folds": 3}, {"fold": 0}, {"folds": 3, "fold": 3}, {"folds": 1, "fold": 0}):
        with pytest.raises(ConfigError, match="fold"):
            ChestXrayDataModule(root=str(root), **bad)
    with pytest.raises(ConfigError, match="folds=20 .*class NORMAL has 18 patient"):
        ChestXrayDataModule(root=str(root), image_size=32, cache_dir=None, folds=20, fold=0).setup("fit")


# ---- cv.folds=3 ------------------------------------------------------------------------------
@pytest.mark.slow
def test_cv_run_writes_folds_out_of_fold_predictions_and_summary(run, root):
    out, score = run
    files = {str(p) for p in train_files(root)}
    folds = read_csv(out / "folds.csv")
    assert sorted(r["path"] for r in folds) == sorted(files)  # every training image, once
    fold_of = {r["path"]: int(r["fold"]) for r in folds}
    patients = defaultdict(set)
    for r in folds:
        patients[r["patient"]].add(r["fold"])
        assert r["patient"] == patient_id(r["path"])
    assert all(len(ks) == 1 for ks in patients.values())  # no patient in two folds
    for k in range(FOLDS):
        labels = [int(r["label"]) for r in folds if int(r["fold"]) == k]
        assert 7 <= labels.count(0) <= 9 and 7 <= labels.count(1) <= 9  # stratified by class
        ckpt = load_checkpoint(out / f"fold_{k}" / "checkpoints" / "best.ckpt")
        assert {key: data_settings(ckpt)[key] for key in ("folds", "fold")} == {"folds": FOLDS, "fold": k}
        val = json.loads((out / f"fold_{k}" / "val_metrics.json").read_text())["at_threshold"]
        assert val["n"] == len(labels)  # each fold's model calibrated on its held-out fold

    schema, rows = read_predictions(out / "oof_predictions.csv")
    assert schema == "eval/1" and sorted(r.path for r in rows) == sorted(files)
    thresholds = [Predictor.from_checkpoint(out / f"fold_{k}" / "checkpoints" / "best.ckpt") for k in range(FOLDS)]
    for r in rows[::5]:  # scored by its fold's model, decided at that model's threshold
        model = thresholds[fold_of[r.path]]
        assert r.probability == pytest.approx(float(model.predict_files([r.path])[0]), abs=1e-5)
        assert r.prediction == int(r.probability >= model.threshold)

    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["folds"] == FOLDS and [f["fold"] for f in summary["per_fold"]] == [0, 1, 2]
    assert summary["out_of_fold"]["n"] == 48 and summary["out_of_fold"]["patients"] == 36
    for key in ("auroc", "accuracy", "f1", "threshold"):
        values = [f["val"][key] for f in summary["per_fold"]]
        assert summary["mean"][key] == pytest.approx(statistics.mean(values))
        assert summary["sd"][key] == pytest.approx(statistics.stdev(values))
    best = [f["best_score"] for f in summary["per_fold"]]
    assert score == pytest.approx(statistics.mean(best)) == summary["best_score"]["mean"]
    # the run's train_summary.json, as sweep_summary reads a job's: the means over the folds
    run_summary = json.loads((out / "train_summary.json").read_text())
    assert run_summary["best_score"] == score and run_summary["val"] == summary["mean"]
    assert run_summary["cv"]["folds"] == FOLDS


def test_a_fold_of_a_sweep_trial_reports_nothing_to_the_trial(root, tmp_path):
    from pneumonia.ensemble.cv import fold_config

    cfg = train_cfg(root, tmp_path, "cv.folds=3", "optuna.storage=sqlite:///x.db", "optuna.study=s", "optuna.trial=4")
    run = fold_config(cfg, 3, 2, tmp_path / "fold_2", resume=False)
    assert (run.data.folds, run.data.fold, run.cv.folds, run.paths.output_dir) == (3, 2, None, str(tmp_path / "fold_2"))
    assert (run.optuna.storage, run.optuna.study, run.optuna.trial) == (None, None, None)
    assert cfg.optuna.trial == 4  # the trial's own config is left as it is


@pytest.mark.slow
def test_fold_ensemble_threshold_is_chosen_on_the_out_of_fold_scores(run, root, tmp_path):
    from pneumonia.runners.eval import evaluate
    from pneumonia.runners.predict import predict

    out, _ = run
    ckpt = out / "checkpoints" / "best.ckpt"
    info = ensemble_info(load_checkpoint(ckpt))
    assert len(info["members"]) == FOLDS and info["cv"]["folds"] == FOLDS and info["cv"]["n"] == 48
    ens = Predictor.from_checkpoint(ckpt)
    assert ens.data_settings.get("folds") is None and ens.data_settings.get("fold") is None
    _, rows = read_predictions(out / "oof_predictions.csv")
    probs = np.array([r.probability for r in rows])
    labels = np.array([r.label for r in rows])
    import torch

    expected = choose_threshold(torch.tensor(probs), torch.tensor(labels), "youden")
    assert ens.threshold == pytest.approx(expected, abs=1e-5)
    assert json.loads((out / "val_metrics.json").read_text())["at_threshold"]["n"] == 48
    assert ens.predict_files([str(p) for p in sorted((root / "test").rglob("*.jpeg"))[:2]]).shape == (2,)

    rep = evaluate(
        compose_cfg(
            "eval",
            [
                f"ckpt_path={ckpt}",
                f"data.root={root}",
                f"data.cache_dir={tmp_path / 'cache'}",
                "logger=none",
                "trainer.accelerator=cpu",
                "intervals.resamples=20",
                "gallery_size=0",
                "describe=false",
            ],
            tmp_path / "eval",
        )
    )
    assert rep["n"] == 12 and rep["threshold"] == pytest.approx(ens.threshold)
    summary = predict(
        compose_cfg("predict", [f"ckpt_path={ckpt}", f"inputs={root / 'test'}", "device=cpu"], tmp_path / "predict")
    )
    assert summary["n"] == 12
    from pneumonia.app.service import Service

    results = Service.from_checkpoint(ckpt, device="cpu").score(sorted((root / "test" / "NORMAL").iterdir())[:2])
    assert all(r.ok for r in results)


def test_resume_keeps_finished_folds_and_builds_again(run, root):
    from pneumonia.ensemble.cv import train

    out, score = run
    best = [out / f"fold_{k}" / "checkpoints" / "best.ckpt" for k in range(FOLDS)]
    before = [p.stat().st_mtime_ns for p in best]
    again, _ = train(train_cfg(root, out, *RECIPE, f"resume={out}"))
    assert again == pytest.approx(score) and [p.stat().st_mtime_ns for p in best] == before
    assert (out / "checkpoints" / "best.ckpt").is_file()
    with pytest.raises(ConfigError, match=r"fold_0 was trained with data.split_seed=42, not 7: it is not fold 0"):
        train(train_cfg(root, out, *RECIPE, f"resume={out}", "data.split_seed=7"))


def test_fold_models_are_not_an_ordinary_ensemble(run):
    from pneumonia.ensemble.build import build_ensemble

    out, _ = run
    with pytest.raises(UserError, match="members disagree on data.fold: .*cv.ensemble=true resume=<its run folder>"):
        build_ensemble([out / f"fold_{k}" / "checkpoints" / "best.ckpt" for k in range(FOLDS)], out / "plain")
    from pneumonia.runners.calibration import recalibrate

    with pytest.raises(UserError, match="the ensemble of a cross-validation's fold models"):
        recalibrate(out / "checkpoints" / "best.ckpt")  # the default split: trained on by every fold model


# ---- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["cv.folds=1"], "cv.folds=1 must be an integer >= 2"),
        (["cv.folds=abc"], "cv.folds='abc' must be an integer >= 2"),
        (["cv.ensemble=true"], "cv.ensemble=true builds the fold models"),
        (["cv.ensemble=maybe", "cv.folds=3"], "cv.ensemble='maybe' must be true or false"),
        (["cv.folds=3", "cv.combine=median"], "cv.combine='median' must be one of prob, logit"),
        (["cv.folds=3", "data.fold=1"], "data.fold=1 with cv.folds=3"),
        (["cv.folds=3", "experiment=best_ensemble"], "cv.folds with ensemble.seeds"),
    ],
)
def test_bad_cv_settings_are_one_line_config_errors(root, tmp_path, overrides, message):
    problem = check_or_fail("train", train_cfg(root, tmp_path, *overrides))
    assert problem is not None and message in problem and "\n" not in problem


def test_more_folds_than_patients_of_a_class_is_refused_before_training(root, tmp_path):
    from pneumonia.ensemble.cv import train

    with pytest.raises(ConfigError, match=r"cv.folds=19 in .*train: 19 folds, but class NORMAL has 18 patient") as err:
        train(train_cfg(root, tmp_path, "cv.folds=19", "cv.combine=logit"))
    assert "\n" not in str(err.value) and not (tmp_path / "fold_0").exists()
