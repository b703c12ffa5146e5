"""Setup shared by the runners: threads, loggers, callbacks, the slow-precision warning."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from omegaconf import DictConfig

from pneumonia.validators import optional_int
from pneumonia.config.instantiate import instantiate_setting
from pneumonia.hardware import cpu_has_native_bf16

log = logging.getLogger(__name__)


class _NoAdverts(logging.Filter):
    """Lightning's "💡 Tip: try installing litlogger/litmodels" lines, printed at every Trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\U0001f4a1 Tip:")


def quiet_lightning_logs() -> None:
    """Each Lightning line once: `lightning` adds its own console handler *and* propagates to
    the root logger, where Hydra already prints (and files) every record; no adverts."""
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().hasHandlers():
        for handler in list(lightning_logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                lightning_logger.removeHandler(handler)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdverts) for f in rank_zero.filters):
        rank_zero.addFilter(_NoAdverts())


def quiet_library_noise() -> None:
    """Lightning's and torchmetrics' warnings that say nothing about this project's runs, and
    each Lightning log line once: set when a runner starts (`configure_torch`, `build_trainer`),
    not when the module is imported, so importing the library changes no global filter."""
    # with decoded images in memory, loader workers only add overhead (docs/performance.md)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    # the model summary sizes parameters in 32 bits under bf16 autocast, which is what they are
    warnings.filterwarnings("ignore", ".*is not supported by the model summary.*")
    # the sanity check's one validation batch may hold one class only (AUROC undefined there)
    warnings.filterwarnings("ignore", ".*No (positive|negative) samples in targets.*")
    # a resumed run writes into its own checkpoints/ folder on purpose
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    quiet_lightning_logs()


def configure_torch(threads: int | None) -> None:
    """`threads` torch intra-op threads (null: torch's default, one per physical core)."""
    quiet_library_noise()
    if threads := optional_int(threads, "threads", 1):
        torch.set_num_threads(threads)


def warn_slow_precision(trainer: L.Trainer) -> None:
    if (
        isinstance(trainer.accelerator, CPUAccelerator)
        and "bf16" in str(trainer.precision)
        and not cpu_has_native_bf16()
    ):
        log.warning(
            "trainer.precision=%s on a CPU without native bf16 (AVX512-BF16/AMX) is ~10x slower "
            "than 32-true here; see README 'Performance'",
            trainer.precision,
        )


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[L.Callback]:
    """The configured callbacks, less those the Trainer settings leave nothing to do for:
    Lightning refuses a progress bar callback beside `trainer.enable_progress_bar=false`, and a
    learning-rate monitor needs a logger to write into."""
    callbacks = [
        instantiate_setting(f"callbacks.{name}", c)
        for name, c in (cfg.get("callbacks") or {}).items()
        if c and "_target_" in c
    ]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not has_logger:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [
        instantiate_setting(f"logger.{name}", c)
        for name, c in (cfg.get("logger") or {}).items()
        if c and "_target_" in c
    ]


def build_trainer(trainer: DictConfig, **kwargs: Any) -> L.Trainer:
    """The `trainer` config node as a Lightning Trainer. Lightning checks its arguments here (accelerator,
    devices, precision, strategy, limits...): a refusal becomes a one-line `ConfigError`
    naming the `trainer.*` key, instead of a traceback after the images are decoded."""
    quiet_library_noise()
    return instantiate_setting("trainer", trainer, **kwargs)


@contextlib.contextmanager
def ddp_ranks_run_this_job() -> Iterator[None]:
    """Lightning starts DDP ranks 1.. by running the command line again with
    `hydra.run.dir=<HydraConfig's run.dir>`. In a sweep's job that command line is the whole
    sweep: each rank would start a sweep of its own (another trial, other parameters) in
    another folder. While it is in effect, the command line is this job's own overrides and
    run.dir its folder, so every rank trains the same trial in the same place."""
    import sys

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        yield
        return
    argv, run_dir = sys.argv[:], hydra_cfg.run.dir
    sys.argv = [argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg):  # type: ignore[arg-type]  # a DictConfig at run time, typed as its dataclass
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra_cfg):  # type: ignore[arg-type]  # a DictConfig at run time, typed as its dataclass
            hydra_cfg.run.dir = run_dir
