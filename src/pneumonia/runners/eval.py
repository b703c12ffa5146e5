"""`evaluate(cfg)`: score a checkpoint on the test split, as `python eval.py` does."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from pneumonia.config.instantiate import instantiate
from pneumonia.data.datamodule import ChestXrayDataModule
from pneumonia.evaluation.metrics import REPORT_KEYS, report
from pneumonia.evaluation.tensorboard import tensorboard_loggers
from pneumonia.inference import Predictor
from pneumonia.runners.common import build_loggers, configure_torch, warn_slow_precision

log = logging.getLogger(__name__)


def format_table(rep: dict[str, Any]) -> str:
    lines = [f"{'metric':<12} {'value':>10}", "-" * 23]
    for key in REPORT_KEYS:
        v = rep[key]
        lines.append(f"{key:<12} {v:>10.4f}" if isinstance(v, float) else f"{key:<12} {v:>10}")
    return "\n".join(lines)


def test_datamodule(predictor: Predictor, data_overrides: dict[str, Any]) -> ChestXrayDataModule:
    """The DataModule as the checkpoint was trained with, less what `eval.yaml`'s `data:` overrides."""
    settings = dict(predictor.data_settings)
    settings.update({k: v for k, v in data_overrides.items() if v is not None})
    settings["bad_image_report"] = data_overrides.get("bad_image_report")
    return ChestXrayDataModule(**settings)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    configure_torch(cfg.get("threads"))
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_checkpoint(cfg.ckpt_path, threshold=cfg.get("threshold"),
                                          precision=cfg.trainer.get("precision"),
                                          accelerator=str(cfg.trainer.get("accelerator", "auto")))
    overrides = dict(cfg.get("data") or {})
    overrides["bad_image_report"] = str(out_dir / "bad_images.tsv")
    datamodule = test_datamodule(predictor, overrides)
    datamodule.check_layout(("test",))  # fail before building anything else
    module = predictor.lightning_module()
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"precision": predictor.precision})
    loggers = build_loggers(cfg)
    trainer: L.Trainer = instantiate(trainer_cfg, logger=loggers or False, callbacks=[])
    warn_slow_precision(trainer)  # a GPU's bf16 checkpoint scored on a CPU without native bf16
    trainer.test(module, datamodule=datamodule)
    if not trainer.is_global_zero:
        return {}  # under DDP every rank has every prediction; rank 0 writes them

    out = module.test_outputs
    probs, labels = out["probs"], out["labels"]
    threshold = float(module.threshold)
    rep = report(probs, labels, threshold)
    (out_dir / "metrics.json").write_text(json.dumps(rep, indent=2))

    paths = datamodule.paths["test"]
    with (out_dir / "predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "probability", "prediction"])
        for i, p, y in zip(out["indices"].tolist(), probs.tolist(), labels.tolist()):
            writer.writerow([paths[i], y, f"{p:.6f}", int(p >= threshold)])

    write_figures(out_dir, probs, labels, rep, loggers)
    if cfg.get("gallery_size"):
        errors_gallery(out_dir / "errors_gallery.png", datamodule, out, threshold, cfg.gallery_size)
    print(f"\nTest split of {datamodule.hparams.root} ({rep['n']} images), checkpoint {cfg.ckpt_path}, "
          f"precision {trainer.precision}\n"
          f"{format_table(rep)}\nWritten to {out_dir}")
    return rep


def write_figures(out_dir: Path, probs: torch.Tensor, labels: torch.Tensor, rep: dict[str, Any],
                  loggers: list[Any]) -> None:
    """Confusion matrix, ROC and PR curves as PNGs and to TensorBoard, with the metrics."""
    import matplotlib.pyplot as plt

    from pneumonia.evaluation.plots import confusion_matrix_figure, pr_figure, roc_figure

    confmat = torch.tensor([[rep["tn"], rep["fp"]], [rep["fn"], rep["tp"]]])
    figures = {
        "confusion_matrix": confusion_matrix_figure(confmat, f"test (threshold {rep['threshold']:.2f})"),
        "roc_curve": roc_figure(probs, labels, rep["auroc"]),
        "pr_curve": pr_figure(probs, labels),
    }
    tensorboards = tensorboard_loggers(loggers)
    for name, fig in figures.items():
        fig.savefig(out_dir / f"{name}.png")
        for tb in tensorboards:
            tb.experiment.add_figure(f"test/{name}", fig, global_step=0)
        plt.close(fig)
    for tb in tensorboards:
        tb.log_metrics({f"eval/{k}": float(v) for k, v in rep.items()}, step=0)
        tb.experiment.flush()


def errors_gallery(path: Path, datamodule: ChestXrayDataModule, out: dict[str, torch.Tensor], threshold: float,
                   size: int) -> Path | None:
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
    items = [{"image": data.images[int(indices[i])].numpy(), "probability": float(probs[i]),
              "prediction": int(probs[i] >= threshold), "label": int(labels[i]),
              "title": ("FP " if labels[i] == 0 else "FN ") + Path(paths[int(indices[i])]).name[:28]}
             for i in chosen.tolist()]
    return save_gallery(path, items)
