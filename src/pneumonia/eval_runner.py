"""`evaluate(cfg)`: score a checkpoint on the test split, as `python eval.py` does."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from pneumonia.checkpoints import load_checkpoint
from pneumonia.datamodule import ChestXrayDataModule
from pneumonia.errors import instantiate
from pneumonia.hardware import auto_precision
from pneumonia.lit_module import PneumoniaClassifier
from pneumonia.metrics import report
from pneumonia.plots import confusion_matrix_figure, pr_figure, roc_figure
from pneumonia.train_runner import build_loggers, configure_torch, warn_slow_precision

log = logging.getLogger(__name__)

REPORT_KEYS = ("accuracy", "precision", "recall", "specificity", "f1", "auroc",
               "tn", "fp", "fn", "tp", "threshold", "n")


def restore(ckpt: dict[str, Any], data_overrides: dict[str, Any]) -> tuple[PneumoniaClassifier, ChestXrayDataModule]:
    """Rebuild module and data module from a checkpoint's plain-type settings."""
    hp = dict(ckpt["hyper_parameters"])
    module = PneumoniaClassifier(**{k: hp[k] for k in ("net", "optimizer", "scheduler", "pos_weight",
                                                       "channels_last", "seed") if k in hp})
    module.load_state_dict(ckpt["state_dict"])
    data_hp = dict(ckpt["datamodule_hyper_parameters"])
    data_hp.update({k: v for k, v in data_overrides.items() if v is not None})
    data_hp["bad_image_report"] = data_overrides.get("bad_image_report")
    return module, ChestXrayDataModule(**data_hp)


def scoring_precision(trainer_cfg: DictConfig, ckpt: dict[str, Any]) -> str:
    """`trainer.precision` if set, else the precision the checkpoint's threshold was chosen
    under. Scores under another precision shift a little (bf16 keeps 8 bits of mantissa), and
    an undertrained model whose scores sit within that shift of its threshold then flips
    predictions: seen on a CPU with native bf16 scoring an fp32-trained checkpoint."""
    if trainer_cfg.get("precision") is not None:
        return str(trainer_cfg.precision)
    stored = (ckpt.get("pneumonia") or {}).get("precision")
    return str(stored) if stored else auto_precision(str(trainer_cfg.get("accelerator", "auto")))


def format_table(rep: dict[str, Any]) -> str:
    lines = [f"{'metric':<12} {'value':>10}", "-" * 23]
    for key in REPORT_KEYS:
        v = rep[key]
        lines.append(f"{key:<12} {v:>10.4f}" if isinstance(v, float) else f"{key:<12} {v:>10}")
    return "\n".join(lines)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    configure_torch(cfg.get("threads"))
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(cfg.ckpt_path)
    overrides = dict(cfg.get("data") or {})
    overrides["bad_image_report"] = str(out_dir / "bad_images.tsv")
    module, datamodule = restore(ckpt, overrides)
    if cfg.get("threshold") is not None:
        module.threshold.fill_(float(cfg.threshold))
    datamodule.check_layout(("test",))  # fail before building anything else
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"precision": scoring_precision(cfg.trainer, ckpt)})
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
    rep = {k: rep[k] for k in REPORT_KEYS}
    (out_dir / "metrics.json").write_text(json.dumps(rep, indent=2))

    paths = datamodule.paths["test"]
    with (out_dir / "predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "probability", "prediction"])
        for i, p, y in zip(out["indices"].tolist(), probs.tolist(), labels.tolist()):
            writer.writerow([paths[i], y, f"{p:.6f}", int(p >= threshold)])

    confmat = torch.tensor([[rep["tn"], rep["fp"]], [rep["fn"], rep["tp"]]])
    figures = {
        "confusion_matrix": confusion_matrix_figure(confmat, f"test (threshold {threshold:.2f})"),
        "roc_curve": roc_figure(probs, labels, rep["auroc"]),
        "pr_curve": pr_figure(probs, labels),
    }
    for name, fig in figures.items():
        fig.savefig(out_dir / f"{name}.png")
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(f"test/{name}", fig, global_step=0)
        plt.close(fig)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_metrics({f"eval/{k}": float(v) for k, v in rep.items()}, step=0)
            logger.experiment.flush()
    print(f"\nTest split of {datamodule.hparams.root} ({rep['n']} images), checkpoint {cfg.ckpt_path}, "
          f"precision {trainer.precision}\n"
          f"{format_table(rep)}\nWritten to {out_dir}")
    return rep
