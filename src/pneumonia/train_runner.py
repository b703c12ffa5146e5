"""`train(cfg)`: everything `python train.py` does, callable from tests and sweeps."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from pneumonia.calibration import calibrate_threshold
from pneumonia.callbacks import TrainingClock
from pneumonia.config_checks import check_train_config
from pneumonia.checkpoints import load_checkpoint
from pneumonia.datamodule import ChestXrayDataModule
from pneumonia.errors import ConfigError, instantiate
from pneumonia.hardware import cpu_has_native_bf16
from pneumonia.lit_module import PneumoniaClassifier

log = logging.getLogger(__name__)

# With decoded images in memory, loader workers only add overhead (README "Performance").
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


def configure_torch(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


def warn_slow_precision(trainer: L.Trainer) -> None:
    if isinstance(trainer.accelerator, CPUAccelerator) and "bf16" in str(trainer.precision) \
            and not cpu_has_native_bf16():
        log.warning("trainer.precision=%s on a CPU without native bf16 (AVX512-BF16/AMX) is ~10x slower "
                    "than 32-true here; see README 'Performance'", trainer.precision)


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[L.Callback]:
    """The configured callbacks, less those the Trainer settings leave nothing to do for:
    Lightning refuses a progress bar callback beside `trainer.enable_progress_bar=false`, and a
    learning-rate monitor needs a logger to write into."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not has_logger:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]


def build_module(cfg: DictConfig, datamodule: ChestXrayDataModule) -> PneumoniaClassifier:
    pos_weight = cfg.module.pos_weight
    if pos_weight == "balanced":
        counts = datamodule.class_counts("train")
        pos_weight = float(counts[0]) / float(counts[1])
        log.info("pos_weight=balanced: %.3f (normal %d / pneumonia %d)", pos_weight, counts[0], counts[1])
    return PneumoniaClassifier(
        net=OmegaConf.to_container(cfg.model, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True) or None,
        pos_weight=pos_weight,
        channels_last=cfg.module.channels_last,
        seed=cfg.seed,
    )


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """Scalar settings for TensorBoard's HPARAMS tab (lists as strings, paths left out)."""
    keep = ("seed", "monitor", "model", "data", "optimizer", "scheduler", "trainer", "module", "threshold")
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not str(k).startswith("_"):
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float, str, bool)):
            flat[prefix] = node
        elif isinstance(node, list):
            flat[prefix] = str(node)

    container = OmegaConf.to_container(cfg, resolve=True)
    for key in keep:
        walk(key, container.get(key))
    for noisy in ("data.root", "data.cache_dir", "data.bad_image_report", "trainer.default_root_dir"):
        flat.pop(noisy, None)
    return flat


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: `resume=<run dir>` means its checkpoints/last.ckpt."""
    path = cfg.get("ckpt_path")
    if cfg.get("resume"):
        if path:
            raise ConfigError("give either resume=<run dir> or ckpt_path=<file>, not both")
        path = str(Path(cfg.resume) / "checkpoints" / "last.ckpt")
        if not Path(path).is_file():
            raise ConfigError(f"resume={cfg.resume}: no checkpoints/last.ckpt there to resume from")
    if path:
        load_checkpoint(path)  # a clear error now for a missing or foreign file
        log.info("Resuming from %s", path)
    return path


def train(cfg: DictConfig) -> tuple[float | None, dict[str, Any]]:
    """Fit, pick the threshold on validation, optionally test. Returns the best value of
    `cfg.monitor` (what a sweeper optimises) and the validation report."""
    check_train_config(cfg)
    resume_from = resume_checkpoint(cfg)
    configure_torch(cfg.get("threads"))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    datamodule: ChestXrayDataModule = instantiate(cfg.data, _convert_="all")
    datamodule.check_layout(("fit", "test") if cfg.test else ("fit",))  # fail before any decoding
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    loggers = build_loggers(cfg)
    clock = TrainingClock()
    callbacks = [*build_callbacks(cfg, has_logger=bool(loggers)), clock]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    warn_slow_precision(trainer)

    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    if trainer.interrupted:
        log.warning("Training was interrupted; resume with ckpt_path=%s", out_dir / "checkpoints" / "last.ckpt")

    checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    checkpoint = next((c for c in checkpoints if c.monitor), checkpoints[0] if checkpoints else None)
    best_path = checkpoint.best_model_path if checkpoint else ""
    best_score = float(checkpoint.best_model_score) if checkpoint and checkpoint.best_model_score is not None else None
    val_report: dict[str, Any] = {}
    if trainer.world_size > 1:
        trainer.strategy.barrier()
        if not trainer.is_global_zero:
            return best_score, val_report  # rank 0 alone calibrates and writes the summaries
    if best_path and not trainer.fast_dev_run:
        # a plain one-device Trainer: after DDP, collective ops on rank 0 alone would hang
        solo = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                         logger=loggers or False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False)
        val_report = calibrate_threshold(solo, module, datamodule, best_path,
                                         OmegaConf.to_container(cfg.threshold), out_dir)
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(flat_hparams(cfg), metrics={f"hp/val_{k}": v for k, v in val_report.items()
                                                                    if k in ("accuracy", "f1", "auroc", "precision",
                                                                             "recall", "specificity", "threshold")})
        if best_score is None:
            best_score = val_report.get(cfg.monitor.split("/", 1)[-1])
        if cfg.test:
            solo.test(module, datamodule=datamodule, ckpt_path=best_path, weights_only=True)

    summary = {"best_checkpoint": best_path, "monitor": cfg.monitor, "best_score": best_score,
               "epochs": trainer.current_epoch,
               # all sessions of a resumed run (TrainingClock), and this process alone
               "train_minutes": round(clock.seconds / 60, 2), "train_seconds": round(clock.seconds, 1),
               "session_train_seconds": round(clock.session_seconds, 1), "val": val_report}
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("Best %s = %s (%s)", cfg.monitor, best_score, best_path)
    return best_score, val_report
