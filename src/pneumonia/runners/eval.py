"""`evaluate(cfg)`: score a checkpoint on the test split, as `python eval.py` does.

Writes metrics.json (the point estimates, then bootstrap intervals, calibration, operating
points, subgroups and the per-patient view), predictions.csv, the figures, errors_gallery.png,
dataset.json (the scored split's counts), shift.json and shift.png (the split against the
checkpoint's validation split: does it look like the training hospital?) and report.html
(all of it in one page)."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf

from pneumonia.runners.checks import check_eval_config
from pneumonia.config.rundir import make_output_dir
from pneumonia.data.datamodule import ChestXrayDataModule
from pneumonia.evaluation import statistics as st
from pneumonia.evaluation.analysis import evaluation_summary, probabilities_before_temperature
from pneumonia.evaluation.metrics import REPORT_KEYS, report
from pneumonia.evaluation.predictions import EVAL_COLUMNS, eval_row
from pneumonia.evaluation.tables import format_table, markdown_table
from pneumonia.evaluation.tensorboard import tensorboard_loggers
from pneumonia.inference import Predictor
from pneumonia.runners.common import build_loggers, build_trainer, configure_torch, warn_slow_precision

log = logging.getLogger(__name__)


__all__ = ["evaluate", "format_table", "test_datamodule", "write_figures", "errors_gallery"]


def test_datamodule(predictor: Predictor, data_overrides: dict[str, Any]) -> ChestXrayDataModule:
    """The DataModule as the checkpoint was trained with, less what `eval.yaml`'s `data:` overrides."""
    settings = dict(predictor.data_settings)
    settings.update({k: v for k, v in data_overrides.items() if v is not None})
    settings["bad_image_report"] = data_overrides.get("bad_image_report")
    return ChestXrayDataModule(**settings)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    check_eval_config(cfg)
    configure_torch(cfg.get("threads"))
    out_dir = make_output_dir(cfg.paths.output_dir)
    predictor = Predictor.from_checkpoint(
        cfg.ckpt_path,
        threshold=cfg.get("threshold"),
        temperature=cfg.get("temperature"),
        tta=cfg.get("tta"),
        precision=cfg.trainer.get("precision"),
        accelerator=str(cfg.trainer.get("accelerator", "auto")),
    )
    intervals_cfg = {"resamples": st.DEFAULT_RESAMPLES, "seed": 0, **dict(cfg.get("intervals") or {})}
    ece_bins = cfg.get("ece_bins", st.DEFAULT_BINS)
    overrides = dict(cfg.get("data") or {})
    overrides["bad_image_report"] = str(out_dir / "bad_images.tsv")
    datamodule = test_datamodule(predictor, overrides)
    datamodule.check_layout(("test",))  # fail before building anything else
    module = predictor.lightning_module()
    trainer_cfg = cast(DictConfig, OmegaConf.merge(cfg.trainer, {"precision": predictor.precision}))
    loggers = build_loggers(cfg)
    trainer = build_trainer(trainer_cfg, logger=loggers or False, callbacks=[])
    warn_slow_precision(trainer)  # a GPU's bf16 checkpoint scored on a CPU without native bf16
    trainer.test(module, datamodule=datamodule, verbose=False)  # our table, with intervals, is printed below
    if not trainer.is_global_zero:
        return {}  # under DDP every rank has every prediction; rank 0 writes them

    out = module.test_outputs
    probs, labels = out["probs"], out["labels"]
    threshold = float(module.threshold)
    all_paths = datamodule.paths["test"]
    paths = [all_paths[i] for i in out["indices"].tolist()]
    rep = report(probs, labels, threshold)
    start = time.perf_counter()
    rep.update(
        evaluation_summary(
            probs.numpy(),
            labels.numpy(),
            threshold,
            paths,
            resamples=int(intervals_cfg["resamples"]),
            seed=int(intervals_cfg["seed"]),
            bins=ece_bins,
            temperature=predictor.temperature,
        )
    )
    (out_dir / "metrics.json").write_text(json.dumps(rep, indent=2))

    with (out_dir / "predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(EVAL_COLUMNS)
        for path, p, y in zip(paths, probs.tolist(), labels.tolist()):
            writer.writerow(eval_row(path, y, p, threshold))

    write_figures(out_dir, probs, labels, rep, loggers, temperature=predictor.temperature)
    shift = shift_check(out_dir, predictor, probs, datamodule.splits["test"].images[out["indices"]], labels)
    if cfg.get("gallery_size"):
        errors_gallery(out_dir / "errors_gallery.png", datamodule, out, threshold, cfg.gallery_size)
    dataset = None
    if cfg.get("describe", True):
        from pneumonia.data.describe import describe_split

        dataset = describe_split(datamodule.data_root, "test")
        (out_dir / "dataset.json").write_text(json.dumps(dataset, indent=2))
    if cfg.get("threshold") is not None:
        source = f"given on the command line (threshold={cfg.threshold})"
    elif predictor.recipe.calibrated:
        source = f"chosen on validation ({predictor.recipe.threshold_method}), stored in the checkpoint"
    else:
        source = "the default 0.5: this checkpoint was never calibrated"
    if cfg.get("temperature") is not None:
        t_source = f"given on the command line (temperature={cfg.temperature})"
    elif predictor.temperature != 1.0:
        t_source = "fitted on validation after training, stored in the checkpoint"
    else:
        t_source = "none stored in the checkpoint; train with calibration.temperature=true to fit one"
    write_report(
        out_dir,
        rep,
        predictor,
        dataset,
        data_root=str(datamodule.data_root),
        precision=str(trainer.precision),
        threshold_source=source,
        temperature_source=t_source,
        shift=shift,
    )
    log.info("Statistics, figures and report in %.1f s", time.perf_counter() - start)
    tracked = track_evaluation(cfg, out_dir, rep)
    print(
        f"\nTest split of {datamodule.hparams.root} ({rep['n']} images), checkpoint {cfg.ckpt_path}, "
        f"precision {trainer.precision}, TTA {'on' if predictor.tta else 'off'}, "
        f"input normalisation {predictor.preprocess.normalize}\n"
        f"{format_table(rep)}\nWritten to {out_dir} (report.html: everything in one page)"
        + (f"\nLogged to the MLflow run {tracked} of the checkpoint" if tracked else "")
    )
    if shift.get("warning"):
        print(shift["warning"])
    return rep


def shift_check(
    out_dir: Path,
    predictor: Predictor,
    probs: torch.Tensor,
    images: torch.Tensor | None,
    labels: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The scored images against the checkpoint's validation split (evaluation/shift.py):
    shift.json and shift.png in `out_dir`; the result (its "warning": one line, or None)."""
    from pneumonia.evaluation.shift import scoring_caveat, write_shift

    image_ref = predictor.shift_reference  # read with the checkpoint, once
    caveat = scoring_caveat(
        tta=predictor.tta,
        stored_tta=predictor.recipe.tta,
        temperature=predictor.temperature,
        stored_temperature=predictor.recipe.temperature,
    )
    return write_shift(
        out_dir,
        probs,
        images,
        val_roc=predictor.recipe.val_roc,
        image_ref=image_ref,
        labels=labels,
        caveat=caveat,
    )


def track_evaluation(cfg: DictConfig, out_dir: Path, rep: dict[str, Any]) -> str | None:
    """The results on the checkpoint's MLflow training run (`mlflow.eval_to_training_run`),
    when it has one and mlflow is installed; the run id."""
    node = cfg.get("mlflow")
    if not node or not node.get("eval_to_training_run", True):
        return None
    from pneumonia.tracking.mlflow_run import log_evaluation, may_be_tracked
    from pneumonia.tracking.settings import MlflowSettings

    settings = MlflowSettings.from_config(node)
    if not may_be_tracked(cfg.ckpt_path, settings):  # no store to look in: mlflow is not even imported
        return None
    return log_evaluation(cfg.ckpt_path, settings, out_dir, rep, REPORT_KEYS)


def write_report(
    out_dir: Path,
    rep: dict[str, Any],
    predictor: Predictor,
    dataset: dict[str, Any] | None,
    *,
    data_root: str,
    precision: str,
    threshold_source: str,
    temperature_source: str,
    shift: dict[str, Any] | None = None,
) -> Path:
    """report.html: everything above in one self-contained page (evaluation/report.py)."""
    from pneumonia.evaluation.report import render_report, run_facts

    run = run_facts(
        checkpoint=str(predictor.recipe.checkpoint),
        data_root=data_root,
        split="test",
        precision=precision,
        threshold=rep["threshold"],
        threshold_source=threshold_source,
        temperature=predictor.temperature,
        temperature_source=temperature_source,
        out_dir=str(out_dir),
    )
    return render_report(
        out_dir / "report.html",
        rep=rep,
        run=run,
        predictor_summary=predictor.summary(),
        dataset=dataset,
        figures_dir=out_dir,
        shift=shift,
    )


def write_figures(
    out_dir: Path,
    probs: torch.Tensor,
    labels: torch.Tensor,
    rep: dict[str, Any],
    loggers: list[Any],
    temperature: float = 1.0,
) -> None:
    """Confusion matrix, ROC and PR curves (with the operating points) and the reliability
    diagram as PNGs and to TensorBoard, with the metrics and their table (text tab)."""
    import matplotlib.pyplot as plt

    from pneumonia.evaluation.plots import (
        confusion_matrix_figure,
        operating_point_marks,
        pr_figure,
        reliability_figure,
        roc_figure,
    )

    confmat = torch.tensor([[rep["tn"], rep["fp"]], [rep["fn"], rep["tp"]]])
    points = rep.get("operating_points") or []
    bins = (rep.get("calibration") or {}).get("bins", st.DEFAULT_BINS)
    before = probabilities_before_temperature(probs.numpy(), temperature) if temperature != 1.0 else None
    figures = {
        "confusion_matrix": confusion_matrix_figure(confmat, f"test (threshold {rep['threshold']:.2f})"),
        "roc_curve": roc_figure(probs, labels, rep["auroc"], points=operating_point_marks(points, "roc")),
        "pr_curve": pr_figure(probs, labels, points=operating_point_marks(points, "pr")[:1]),
        "reliability_diagram": reliability_figure(probs.numpy(), labels.numpy(), bins, probs_before=before),
    }
    tensorboards = tensorboard_loggers(loggers)
    for name, fig in figures.items():
        fig.savefig(out_dir / f"{name}.png")
        for tb in tensorboards:
            tb.experiment.add_figure(f"test/{name}", fig, global_step=0)
        plt.close(fig)
    for tb in tensorboards:
        tb.log_metrics({f"eval/{k}": float(rep[k]) for k in REPORT_KEYS}, step=0)
        tb.experiment.add_text("eval/metrics", markdown_table(rep), global_step=0)
        tb.experiment.flush()


def errors_gallery(
    path: Path, datamodule: ChestXrayDataModule, out: dict[str, torch.Tensor], threshold: float, size: int
) -> Path | None:
    """The most confident mistakes: up to `size // 2` false positives (highest probability
    among NORMAL images) and false negatives (lowest among PNEUMONIA), as one grid."""
    probs, labels, indices = out["probs"], out["labels"], out["indices"]
    wrong_pos = torch.nonzero((labels == 0) & (probs >= threshold)).flatten()
    wrong_neg = torch.nonzero((labels == 1) & (probs < threshold)).flatten()
    fp = wrong_pos[torch.argsort(probs[wrong_pos], descending=True)][: (size + 1) // 2]
    fn = wrong_neg[torch.argsort(probs[wrong_neg])][: size // 2]
    chosen = torch.cat([fp, fn])
    if not len(chosen):
        log.info("No false positives or false negatives: no errors gallery")
        return None
    from pneumonia.explain.figures import save_gallery

    data, paths = datamodule.splits["test"], datamodule.paths["test"]
    items = [
        {
            "image": data.images[int(indices[i])].numpy(),
            "probability": float(probs[i]),
            "prediction": int(probs[i] >= threshold),
            "label": int(labels[i]),
            "title": ("FP " if labels[i] == 0 else "FN ") + Path(paths[int(indices[i])]).name[:28],
        }
        for i in chosen.tolist()
    ]
    return save_gallery(path, items)
