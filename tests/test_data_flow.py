"""Each step of the data flow done once (docs/architecture.md, Data flow): after training,
best.ckpt is read once (calibration's `Predictor`), one LightningModule is built from it
(it scores validation, then gets the chosen threshold and temperature, and scores test/), the
validation split is scored once, and the weights checksum that calibration wrote goes on to
the tracking run without reading the file again. A cross-validation takes each fold's
held-out scores from its calibration instead of scoring the fold again, and they are the
ones fresh scoring gives, bit for bit."""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from pneumonia.data.synthetic import make_chest_xray_tree
from pneumonia.inference import Predictor
from pneumonia.inference.checkpoint import load_checkpoint
from pneumonia.integrity import stored_digest
from pneumonia.models.classifier import PneumoniaClassifier
from tests.helpers import CV_FOLDS, TINY_CV, train_cfg

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module

FOLDS = CV_FOLDS
CV_RECIPE = (*TINY_CV, "calibration.temperature=true")  # the held-out scores as the stored temperature gives them


@dataclass
class Counts:
    loads: Counter[str] = field(default_factory=Counter)  # torch.load calls, by file
    modules: int = 0  # PneumoniaClassifier built (training's, and those made from a checkpoint)
    from_checkpoint: int = 0  # Predictor.lightning_module: LightningModules made from a checkpoint
    predict: int = 0  # Trainer.predict passes (calibration's and out-of-fold scoring)
    test: int = 0  # Trainer.test passes

    def reads(self, path: Path) -> int:
        return self.loads[str(path.resolve())]


@contextlib.contextmanager
def counting() -> Iterator[Counts]:
    counts = Counts()
    load, init = torch.load, PneumoniaClassifier.__init__
    lightning_module, predict, test = Predictor.lightning_module, L.Trainer.predict, L.Trainer.test

    def counted_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        counts.loads[str(Path(f).resolve()) if isinstance(f, (str, Path)) else repr(f)] += 1
        return load(f, *args, **kwargs)

    @functools.wraps(init)  # Lightning reads the arguments' names from __init__'s signature
    def counted_init(self: Any, *args: Any, **kwargs: Any) -> None:
        counts.modules += 1
        init(self, *args, **kwargs)

    def counted_lightning_module(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts.from_checkpoint += 1
        return lightning_module(self, *args, **kwargs)

    def counted_predict(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts.predict += 1
        return predict(self, *args, **kwargs)

    def counted_test(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts.test += 1
        return test(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "load", counted_load)
        mp.setattr(PneumoniaClassifier, "__init__", counted_init)
        mp.setattr(Predictor, "lightning_module", counted_lightning_module)
        mp.setattr(L.Trainer, "predict", counted_predict)
        mp.setattr(L.Trainer, "test", counted_test)
        yield counts


# ---- one training run ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_training_run_reads_best_ckpt_once_and_builds_one_module_from_it(xray_root, tmp_path):
    from pneumonia.runners.train import train_run

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    cfg = train_cfg(
        xray_root,
        out,
        "trainer.max_epochs=1",
        "test=true",  # test/ scored with calibration's module: no second one
        "logger=mlflow",
        f"mlflow.tracking_uri={store}",
        "mlflow.log_checkpoint=false",
    )
    with counting() as counts:
        result = train_run(cfg)
    best = out / "checkpoints" / "best.ckpt"
    assert Path(result.best_checkpoint) == best and result.run_dir == out and result.epochs == 1
    assert counts.reads(best) == 1  # calibration's one read; the summary and the tracking run read none
    assert sum(counts.loads.values()) == 1, counts.loads
    assert counts.from_checkpoint == 1  # the one module from best.ckpt: scores validation and test/
    assert counts.modules == 2  # training's module, and that one
    assert counts.predict == 1 and counts.test == 1  # validation scored once (for the threshold)

    calibrated = result.calibration
    assert calibrated is not None and calibrated.module is None  # the record, without the module
    assert result.val_report == calibrated.val_report
    assert calibrated.threshold == pytest.approx(result.val_report["threshold"])
    ckpt = load_checkpoint(best)
    assert calibrated.digest == stored_digest(ckpt) and calibrated.epoch == ckpt["epoch"]
    assert calibrated.data_settings == ckpt["datamodule_hyper_parameters"]
    assert len(calibrated.scores.paths) == len(calibrated.scores.labels) == calibrated.val_report["n"]

    from mlflow.tracking import MlflowClient

    import json

    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    tags = MlflowClient(store).get_run(run_id).data.tags
    assert tags["pneumonia.weights_digest"] == stored_digest(ckpt)  # calibration's digest, handed on


# ---- a cross-validation ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """`python train.py cv.folds=3 cv.ensemble=true calibration.temperature=true`, made tiny,
    counted; with the out-of-fold scores `score_out_of_fold` gave."""
    from pneumonia.ensemble import cv

    root = make_chest_xray_tree(tmp_path_factory.mktemp("flow_cv_data"), {"train": (24, 24), "test": (6, 6)})
    out = tmp_path_factory.mktemp("flow_cv_run")
    cfg = train_cfg(root, out, *CV_RECIPE)
    given: list[Any] = []

    def kept(*args: Any, **kwargs: Any) -> Any:
        given.append(score_out_of_fold(*args, **kwargs))
        return given[-1]

    score_out_of_fold = cv.score_out_of_fold
    with pytest.MonkeyPatch.context() as mp, counting() as counts:
        mp.setattr(cv, "score_out_of_fold", kept)
        cv.train(cfg)
    return cfg, out, counts, given[0]


@pytest.mark.slow
def test_a_cross_validation_scores_each_fold_once(cv_run):
    _, out, counts, _ = cv_run
    for k in range(FOLDS):
        best = out / f"fold_{k}" / "checkpoints" / "best.ckpt"
        # calibration after training (the one read for scoring), then the ensemble builder
        # taking the fold model's weights in
        assert counts.reads(best) == 2, counts.loads
    assert counts.reads(out / "checkpoints" / "best.ckpt") == 0  # the ensemble: written, calibrated in memory
    assert counts.from_checkpoint == FOLDS  # one module per fold model, none for out-of-fold scoring
    assert counts.modules == 2 * FOLDS + 1  # each fold's training and calibration modules, the ensemble's
    assert counts.predict == FOLDS  # each fold's held-out images scored once, by its calibration
    assert counts.test == 0


@pytest.mark.slow
def test_out_of_fold_scores_are_bit_equal_to_scoring_the_folds_again(cv_run):
    """The held-out scores calibration computed for each fold are the ones the fold's
    best.ckpt gives through the Predictor now (temperature included), tensor for tensor; the
    files written from them are the same bytes."""
    from pneumonia.ensemble.cv import FOLDS as FOLDS_CSV
    from pneumonia.ensemble.cv import OOF_PREDICTIONS, score_out_of_fold

    cfg, out, _, reused = cv_run
    written = {name: (out / name).read_bytes() for name in (OOF_PREDICTIONS, FOLDS_CSV)}
    with counting() as counts:
        fresh = score_out_of_fold(cfg, out, FOLDS)  # no calibration records: every fold scored again
    assert counts.predict == FOLDS  # it did score them
    assert reused.scores.paths == fresh.scores.paths and reused.folds == fresh.folds
    for name in ("probs", "labels", "logits"):
        a, b = getattr(reused.scores, name), getattr(fresh.scores, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert reused.thresholds == fresh.thresholds
    assert reused.reference == fresh.reference and reused.patients == fresh.patients
    assert {name: (out / name).read_bytes() for name in written} == written
    # the temperature was fitted: the reused scores are the scaled ones, not the raw logits
    assert all(
        Predictor.from_checkpoint(out / f"fold_{k}" / "checkpoints" / "best.ckpt").temperature != 1.0
        for k in range(FOLDS)
    )
