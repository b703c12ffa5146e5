"""`train(cfg)` for a config with `cv.folds=K` (`python train.py experiment=best cv.folds=5`):
k-fold cross-validation by patient.

`train/` is cut into K folds, each patient's images in one fold and each class spread evenly
(`pneumonia.data.patients.grouped_folds`, seeded by `data.split_seed`; `val/` is not used).
Fold k's model trains on the other folds and validates on fold k, exactly as
`python train.py <the same overrides> data.folds=K data.fold=k` would, into `<run>/fold_<k>/`
(`pneumonia.runners.train.train`: checkpoints, its threshold chosen on fold k, val_metrics.json).
Then, in `<run>/`:

- `folds.csv`: every training image's patient, label and fold;
- `oof_predictions.csv` (predictions.csv's `eval/1` layout): every training image scored by
  the fold model that never trained on it, decided at that model's threshold;
- `cv_summary.json`: each fold's validation metrics, their mean and standard deviation, the
  pooled out-of-fold AUROC;
- with `logger=mlflow`: a parent run holding the means, sd, out-of-fold AUROC and these files,
  each fold's run nested under it (`pneumonia.tracking.mlflow_run.start_cv_run`);
- with `cv.ensemble=true`: the K fold models built into one ensemble checkpoint
  (`<run>/checkpoints/best.ckpt`, `pneumonia.ensemble.build`), its threshold (and temperature)
  chosen on the out-of-fold scores, K times more images than one fold's.

The value returned (what a sweep optimises) is the mean over the folds of each fold's best
`monitor`. `resume=<run>` keeps finished folds, resumes an interrupted one and writes the rest
again, as `experiment=best_ensemble` does (`pneumonia.ensemble.train`). Folds trained alone,
`python train.py ... data.folds=K data.fold=k hydra.run.dir=<run>/fold_<k>` (one job each, on
any machine), are gathered the same way: `python train.py ... cv.folds=K resume=<run>`.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, open_dict

from pneumonia.config.plain import to_dict
from pneumonia.ensemble.train import finished, write_member_config
from pneumonia.errors import ConfigError
from pneumonia.evaluation.artefacts import TrainSummary, read_train_summary, read_val_metrics, write_train_summary
from pneumonia.tracking.mlflow_run import end_cv_run_early, finish_cv_run, start_cv_run

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pneumonia.data.datamodule import ChestXrayDataModule
    from pneumonia.inference import Predictor
    from pneumonia.runners.calibration import Calibrated, Scores

log = logging.getLogger(__name__)

SUMMARY = "cv_summary.json"
OOF_PREDICTIONS = "oof_predictions.csv"
FOLDS = "folds.csv"
FOLDS_COLUMNS = ("path", "patient", "label", "fold")


def fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / f"fold_{fold}"


@dataclass(frozen=True)
class CvSettings:
    folds: int
    ensemble: bool
    combine: str


def check_cv_config(cfg: DictConfig) -> CvSettings:
    """`cv.*` (see `runners.checks.check_cv_settings`), `cv.combine`, and enough patients of
    each class in train/ for `cv.folds` folds (file names only: nothing is decoded)."""
    from pneumonia.data.folder import scan_split
    from pneumonia.data.layout import find_data_root
    from pneumonia.data.patients import grouped_folds
    from pneumonia.runners.checks import check_cv_settings

    folds = check_cv_settings(cfg)
    if folds is None:
        raise ConfigError("cv.folds=null: no cross-validation to run (give cv.folds=K, K >= 2)")
    combine = cfg.cv.get("combine", "prob")  # checked against models.Ensemble's declaration
    if not cfg.data.get("download"):
        files = scan_split(find_data_root(str(cfg.data.root)), "train")
        try:
            grouped_folds(files.paths, files.labels, folds, int(cfg.data.split_seed))
        except ValueError as err:
            raise ConfigError(f"cv.folds={folds} in {files.split_dir}: {err}") from None
    return CvSettings(folds, bool(cfg.cv.get("ensemble", False)), str(combine))


def fold_config(cfg: DictConfig, folds: int, fold: int, folder: Path, resume: bool) -> DictConfig:
    """`cfg` as `python train.py ... data.folds=<folds> data.fold=<fold>` with its run folder at
    `folder`; not a sweep's trial of its own (the trial's value is the mean over the folds)."""
    run = copy.deepcopy(cfg)
    with open_dict(run):
        run.cv.folds = None
        run.cv.ensemble = False
        run.data.folds = folds
        run.data.fold = fold
        run.paths.output_dir = str(folder)
        run.resume = str(folder) if resume else None
        run.ckpt_path = None
        if run.get("optuna") is not None:  # the folds report no epochs to the trial: it is told the mean
            run.optuna.storage = run.optuna.study = run.optuna.trial = None
    return run


def check_kept_fold(cfg: DictConfig, folder: Path, k_folds: int, fold: int) -> None:
    """A finished fold kept by `resume=` (or trained alone with `data.folds=K data.fold=k` into
    that folder) must be that fold of these folds: one line naming the first setting that differs."""
    from pneumonia.inference.checkpoint import data_settings, load_checkpoint

    data = data_settings(load_checkpoint(folder / "checkpoints" / "best.ckpt"))
    want = {"folds": k_folds, "fold": fold, "split_seed": int(cfg.data.split_seed)}
    for key, value in want.items():
        if data.get(key) != value:
            raise ConfigError(
                f"{folder} was trained with data.{key}={data.get(key)!r}, not {value!r}: it is not fold {fold} of "
                f"these {k_folds} folds (move it away, or resume with the settings it was trained with)"
            )


def train(cfg: DictConfig) -> tuple[float | None, dict[str, Any]]:
    """Train the folds, score out of fold, summarise, build the ensemble when asked; returns the
    mean over the folds of their best `monitor` and the summary's mean/sd. With MLflow, a
    cross-validation stopped by an error or Ctrl-C leaves its parent run FAILED or KILLED."""
    settings = check_cv_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    resuming = bool(cfg.get("resume"))
    if resuming and Path(str(cfg.resume)).resolve() != run_dir.resolve():
        raise ConfigError(f"resume={cfg.resume}: a cross-validation resumes in its own folder, not in {run_dir}")
    start = time.perf_counter()
    start_cv_run(cfg, run_dir)  # with logger=mlflow: the parent run of the folds' runs
    try:
        return _train_folds(cfg, settings, run_dir, resuming, start)
    except BaseException as err:
        end_cv_run_early(run_dir, interrupted=isinstance(err, KeyboardInterrupt))
        raise


def _train_folds(
    cfg: DictConfig, settings: CvSettings, run_dir: Path, resuming: bool, start: float
) -> tuple[float | None, dict[str, Any]]:
    from pneumonia.runners.train import train_run

    k_folds = settings.folds
    scores: list[float | None] = []
    held_out: list[Calibrated | None] = []  # each fold's calibration record: its held-out scores
    for k in range(k_folds):
        folder = fold_dir(run_dir, k)
        if resuming and finished(folder):
            check_kept_fold(cfg, folder, k_folds, k)
            log.info("Fold %d/%d: finished before, kept: %s", k + 1, k_folds, folder)
            scores.append(read_train_summary(folder).best_score)
            held_out.append(None)  # trained by an earlier process: scored again below
            continue
        again = resuming and (folder / "checkpoints" / "last.ckpt").is_file()
        run = fold_config(cfg, k_folds, k, folder, again)
        write_member_config(run, folder, [f"data.folds={k_folds}", f"data.fold={k}"])
        log.info("Fold %d/%d%s: %s", k + 1, k_folds, ", resumed" if again else "", folder)
        result = train_run(run)
        scores.append(result.best_score)
        held_out.append(result.calibration)
    log.info(
        "%d folds trained in %.1f min; %d of them scored on their held-out fold by calibration",
        k_folds,
        (time.perf_counter() - start) / 60,
        sum(c is not None for c in held_out),
    )

    oof = score_out_of_fold(cfg, run_dir, k_folds, held_out)
    summary = summarise(cfg, run_dir, k_folds, scores, oof)
    (run_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    log.info("%s", fold_table(summary))
    if settings.ensemble:
        build(cfg, run_dir, settings, oof, resuming)
    write_mean_summary(cfg, run_dir, summary, settings.ensemble)
    finish_cv_run(cfg, run_dir)  # the files above, logged to the parent run
    mean = summary["best_score"]["mean"]
    log.info(
        "Cross-validation, %d folds: %s = %s\nOutputs in %s: %s, %s, %s%s",
        k_folds,
        cfg.monitor,
        "n/a" if mean is None else f"{mean:.4f} ± {summary['best_score']['sd']:.4f} (mean ± sd over the folds)",
        run_dir,
        SUMMARY,
        OOF_PREDICTIONS,
        FOLDS,
        ", checkpoints/best.ckpt (the fold models' ensemble)" if settings.ensemble else "",
    )
    return mean, {"mean": summary["mean"], "sd": summary["sd"]}


@dataclass(frozen=True)
class OutOfFold:
    """Every training image scored by the model of its fold (the one that never trained on it)."""

    scores: Scores
    folds: list[int]  # each score's fold
    thresholds: list[float]  # each fold model's threshold
    reference: dict[str, Any]  # the shift reference of all training images
    patients: int


def score_out_of_fold(
    cfg: DictConfig, run_dir: Path, k_folds: int, held_out: Sequence[Calibrated | None] = ()
) -> OutOfFold:
    """Every training image scored by the model of its fold, as the Predictor scores them (its
    temperature and TTA), on one decoding of train/; write folds.csv and oof_predictions.csv.
    `held_out[k]`: fold k's calibration record, when this process trained fold k: its scores
    of fold k (the fold model's validation split) are these, bit for bit, so they are taken
    as they are; the folds without one (kept by `resume=`) are scored here with their best.ckpt."""
    import torch

    from pneumonia.data.datamodule import ChestXrayDataModule
    from pneumonia.data.patients import patient_id
    from pneumonia.evaluation.predictions import EVAL_COLUMNS, eval_row
    from pneumonia.inference import Predictor
    from pneumonia.runners.calibration import Scores, shift_reference_of

    records = list(held_out) + [None] * (k_folds - len(held_out))
    predictors = {k: Predictor.from_checkpoint(fold_checkpoint(run_dir, k)) for k, r in enumerate(records) if r is None}
    first = records[0].data_settings if records[0] is not None else predictors[0].data_settings
    data = {**first, "fold": 0, "bad_image_report": None, "download": False}
    datamodule = ChestXrayDataModule(**data)
    datamodule.setup("fit")
    parts: list[tuple[torch.Tensor, ...]] = []
    paths: list[str] = []
    fold_of: list[int] = []
    thresholds: list[float] = []
    for k, record in enumerate(records):
        if record is not None:
            fold, threshold = record.scores, record.threshold
        else:
            datamodule.use_fold(k)
            fold, threshold = score_fold(cfg, predictors[k], datamodule), predictors[k].threshold
        parts.append((fold.probs, fold.labels, fold.logits))
        paths += fold.paths
        fold_of += [k] * len(fold.paths)
        thresholds.append(threshold)
    probs, labels, logits = (torch.cat(t) for t in zip(*parts))

    assigned = datamodule.fold_of()
    with (run_dir / FOLDS).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FOLDS_COLUMNS)
        for path, label in sorted(zip(paths, labels.tolist())):
            writer.writerow([path, patient_id(path), label, assigned[path]])
    with (run_dir / OOF_PREDICTIONS).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(EVAL_COLUMNS)
        for path, y, p, k in sorted(zip(paths, labels.tolist(), probs.tolist(), fold_of)):
            writer.writerow(eval_row(path, y, p, thresholds[k]))
    return OutOfFold(
        Scores(probs, labels, logits, paths),
        fold_of,
        thresholds,
        shift_reference_of(datamodule.all_folds()),
        len({patient_id(p) for p in paths}),
    )


def fold_checkpoint(run_dir: Path, fold: int) -> Path:
    return fold_dir(run_dir, fold) / "checkpoints" / "best.ckpt"


def score_fold(cfg: DictConfig, predictor: Predictor, datamodule: ChestXrayDataModule) -> Scores:
    """The validation split of `datamodule` (set to a fold) scored by `predictor` (that fold's
    model, with its temperature and TTA) through a one-device Trainer under `trainer.precision`,
    as calibration scored it after training."""
    import lightning as L

    from pneumonia.evaluation.calibration import predict_logits
    from pneumonia.runners.calibration import Scores

    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=to_dict(cfg.trainer, resolve=True)["precision"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    probs, labels, indices, logits = predict_logits(trainer, predictor.lightning_module(), datamodule, "val")
    return Scores(probs, labels, logits, [datamodule.paths["val"][i] for i in indices.tolist()])


def summarise(
    cfg: DictConfig, run_dir: Path, k_folds: int, scores: list[float | None], oof: OutOfFold
) -> dict[str, Any]:
    """cv_summary.json: per fold its best `monitor` and its validation metrics at its threshold
    (val_metrics.json), then the mean and the standard deviation (n - 1) of each over the folds."""
    from pneumonia.evaluation.metrics import METRIC_NAMES, report

    keys = (*METRIC_NAMES, "threshold")
    per_fold: list[dict[str, Any]] = []
    for k in range(k_folds):
        folder = fold_dir(run_dir, k)
        at = read_val_metrics(folder).at_threshold
        labels = [y for y, f in zip(oof.scores.labels.tolist(), oof.folds) if f == k]
        per_fold.append(
            {
                "fold": k,
                "run": folder.name,
                "best_score": scores[k],
                "n": len(labels),
                "n_pneumonia": int(sum(labels)),
                "val": {key: at[key] for key in keys if key in at},
            }
        )
    names = [key for key in keys if all(key in f["val"] for f in per_fold)]
    mean = {key: _mean([f["val"][key] for f in per_fold]) for key in names}
    sd = {key: _sd([f["val"][key] for f in per_fold]) for key in names}
    best = [f["best_score"] for f in per_fold]
    pooled = report(oof.scores.probs, oof.scores.labels, 0.5)
    return {
        "folds": k_folds,
        "monitor": str(cfg.monitor),
        "split_seed": int(cfg.data.split_seed),
        "best_score": {
            "mean": None if None in best else _mean(best),
            "sd": None if None in best else _sd(best),
        },
        "mean": mean,
        "sd": sd,
        "sd_note": "sample standard deviation over the folds (n - 1)",
        "per_fold": per_fold,
        "out_of_fold": {
            "n": len(oof.scores.paths),
            "patients": oof.patients,
            "auroc": pooled["auroc"],  # all folds' scores pooled; each image scored by the model that never saw it
            "predictions": OOF_PREDICTIONS,
        },
    }


def write_mean_summary(cfg: DictConfig, run_dir: Path, summary: dict[str, Any], ensemble: bool) -> None:
    """<run>/train_summary.json as a single run has one, for sweep_summary and the tracking tools:
    `best_score` and `val` are the means over the folds (replacing the ensemble builder's)."""
    minutes = [read_train_summary(run_dir / f["run"]).train_minutes for f in summary["per_fold"]]
    trial = (cfg.get("optuna") or {}).get("trial")
    write_train_summary(
        run_dir,
        TrainSummary(
            best_checkpoint=str(run_dir / "checkpoints" / "best.ckpt") if ensemble else "",
            monitor=summary["monitor"],
            best_score=summary["best_score"]["mean"],
            epochs=None,
            train_minutes=None if None in minutes else round(sum(m or 0.0 for m in minutes), 2),
            val=summary["mean"],
            cv={
                "folds": summary["folds"],
                "best_score_sd": summary["best_score"]["sd"],
                "sd": summary["sd"],
                "summary": SUMMARY,
            },
            trial=None if trial is None else int(trial),
        ),
    )


def _mean(values: list[Any]) -> float:
    return float(sum(values) / len(values))


def _sd(values: list[Any]) -> float:
    m = _mean(values)
    return float(math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)))


def fold_table(summary: dict[str, Any]) -> str:
    """Each fold's validation AUROC, accuracy, F1 and threshold, then their mean ± sd."""
    from pneumonia.ensemble.build import _fmt

    cols = ("auroc", "accuracy", "f1", "threshold")
    rows: list[tuple[str, ...]] = [("fold", "images", *cols)]
    for f in summary["per_fold"]:
        rows.append((str(f["fold"]), str(f["n"]), *(_fmt(f["val"].get(c)) for c in cols)))
    rows.append(
        (
            "mean ± sd",
            "",
            *(f"{summary['mean'][c]:.4f} ± {summary['sd'][c]:.4f}" if c in summary["mean"] else "n/a" for c in cols),
        )
    )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return f"Cross-validation, {summary['folds']} folds (each validated on its held-out fold):\n" + "\n".join(lines)


def build(cfg: DictConfig, run_dir: Path, settings: CvSettings, oof: OutOfFold, resuming: bool) -> None:
    """The fold models as one ensemble in <run>/checkpoints/best.ckpt, its threshold chosen on
    the out-of-fold scores."""
    from pneumonia.ensemble.build import build_ensemble, eval_command, members_table

    target = run_dir / "checkpoints" / "best.ckpt"
    if resuming:
        target.unlink(missing_ok=True)  # derived from the folds: built again
    summary = build_ensemble(
        [fold_checkpoint(run_dir, k) for k in range(settings.folds)],
        run_dir,
        combine=settings.combine,
        threshold=to_dict(cfg.threshold, resolve=True),
        calibration=to_dict(cfg.calibration, resolve=True) if cfg.get("calibration") else None,
        intervals=to_dict(cfg.intervals, resolve=True) if cfg.get("intervals") else None,
        accelerator=str(cfg.trainer.get("accelerator", "auto")),
        monitor=str(cfg.monitor),
        oof=oof.scores,
        oof_reference=oof.reference,
        cv={
            "folds": settings.folds,
            "split_seed": int(cfg.data.split_seed),
            "threshold_on": "out-of-fold predictions",
            "n": len(oof.scores.paths),
        },
    )
    log.info(
        "%s\n(the ensemble's row: its threshold chosen on the %d out-of-fold scores, each image's by the "
        "model that never trained on it)\nNext: %s",
        members_table(summary),
        len(oof.scores.paths),
        eval_command(target),
    )
