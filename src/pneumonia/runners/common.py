"""Setup shared by the runners: threads, loggers, callbacks, the slow-precision warning."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from omegaconf import DictConfig

from pneumonia.config.instantiate import instantiate
from pneumonia.hardware import cpu_has_native_bf16

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
