"""Project callbacks that Lightning does not ship."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks import StochasticWeightAveraging as _LightningSWA
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pneumonia.errors import ConfigError, UserError
from pneumonia.io import atomic_write

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError):
    """Training diverged; the message says which checkpoint is the last good one."""


class FiniteLossGuard(L.Callback):
    """Stop at the first NaN/inf training loss, before it reaches any checkpoint.

    Lightning's EarlyStopping(check_finite) only looks at the monitored validation metric
    once per epoch, after the weights are already ruined and possibly saved as last.ckpt.

    Reading the loss on the host waits for the device every step; when the module defers its
    host syncs (`module.defer_sync`, on a GPU) the check is kept on the device and read every
    `every_n_batches` batches and before every validation and epoch end, that is still before
    any checkpoint is written.
    """

    def __init__(self, every_n_batches: int = 50) -> None:
        if isinstance(every_n_batches, bool) or not isinstance(every_n_batches, int) or every_n_batches < 1:
            raise ConfigError(f"callbacks.finite_loss.every_n_batches={every_n_batches!r} must be an integer >= 1")
        self.every_n_batches = every_n_batches
        self._bad: torch.Tensor | None = None  # deferred: any non-finite loss since the last check
        self._first_batch = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        if getattr(pl_module, "defers_sync", False):
            bad = ~torch.isfinite(loss.detach()).all()
            if self._bad is None:
                self._bad, self._first_batch = bad, batch_idx
            else:
                self._bad = self._bad | bad
            if (batch_idx + 1) % self.every_n_batches == 0:
                self._check(trainer, batch_idx)
            return
        if torch.isfinite(loss).all():
            return
        self._raise(trainer, f"({float(loss.detach().float())}) at epoch {trainer.current_epoch}, batch {batch_idx}")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: L.Trainer, batch_idx: int | None = None) -> None:
        bad, self._bad = self._bad, None
        if bad is not None and bool(bad):
            span = (
                f"from batch {self._first_batch} on"
                if batch_idx is None
                else f"in batches {self._first_batch} to {batch_idx}"
            )
            self._raise(trainer, f"at epoch {trainer.current_epoch}, {span}")

    def _raise(self, trainer: L.Trainer, where: str) -> None:
        saved = [
            Path(d) / "last.ckpt" for d in (getattr(c, "dirpath", None) for c in trainer.checkpoint_callbacks) if d
        ]
        ckpt = next((p for p in saved if p.is_file()), None)
        last_good = f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"non-finite training loss {where}; {last_good}. Try a lower optimizer.lr or trainer.gradient_clip_val=1.0"
        )


class Interruption(L.Callback):
    """Which signal stopped `fit`, and at which epoch and step, for train.py's one-line report.

    Lightning turns SIGTERM into a `SIGTERMException` (a `SystemExit` with status 0) at the
    next batch, and Ctrl-C (SIGINT, `KeyboardInterrupt`) into `sys.exit(1)`; both pass
    through `on_exception` first. Exit statuses: 128 + the signal number, as a shell reports
    a process killed by it.
    """

    EXIT = {"SIGTERM": 143, "SIGINT": 130}

    def __init__(self) -> None:
        self.signal: str | None = None
        self.epoch = self.step = 0

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.signal = "SIGTERM"
        elif isinstance(exception, KeyboardInterrupt):
            self.signal = "SIGINT"
        else:
            return
        self.epoch, self.step = trainer.current_epoch, trainer.global_step


class TerminatedBeforeFit(BaseException):
    """SIGTERM arrived before `fit` started (checking, decoding): `SigtermBeforeFit`."""


class SigtermBeforeFit:
    """SIGTERM raises `TerminatedBeforeFit` from here until `release()` (called just before
    `fit`), so train.py ends with its one line (exit 143) instead of dying silently in the
    middle of decoding. Released before `fit` because Lightning chains the handler it finds
    into its own (which stops at the next batch and saves nothing half-done). A no-op outside
    the main thread, where signal handlers cannot be set."""

    def __init__(self) -> None:
        import signal
        import threading

        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise TerminatedBeforeFit

    def release(self) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class TrainingClock(L.Callback):
    """Wall-clock seconds spent in `fit`, carried in every checkpoint so that a resumed run
    reports the training time of all its sessions, not only of the last one.

    Time lost to a kill after the last checkpoint is not counted: that work is redone.
    """

    def __init__(self) -> None:
        self.resumed_seconds = 0.0  # from the checkpoint resumed from
        self._started: float | None = None
        self._session = 0.0  # this process's fit, once it ended

    @property
    def session_seconds(self) -> float:
        return time.perf_counter() - self._started if self._started is not None else self._session

    @property
    def seconds(self) -> float:
        return self.resumed_seconds + self.session_seconds

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._session, self._started = self.session_seconds, None

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resumed_seconds = float(state_dict.get("seconds", 0.0))


class StochasticWeightAveraging(_LightningSWA):
    """Lightning's stochastic weight averaging (`callbacks.swa`), with settings checked like
    every config value and a `best.ckpt` that holds the averaged weights.

    From epoch `swa_epoch_start` on, the learning rate is annealed to `swa_lrs` (SWALR,
    replacing the configured scheduler) and the weights are averaged, equally, once per
    epoch: Lightning takes them at the start of each epoch from `swa_epoch_start` to the
    last; this class also adds the weights at the end of the last epoch, which Lightning
    leaves out. The average goes into the module at the end. For a network with batch norm,
    one extra epoch then recomputes the batch-norm statistics for the averaged weights (a
    pass over the training data, no gradient step), and that epoch is validated like any
    other.

    Checkpoint selection by `monitor` during training only ever sees the weights of single
    epochs, so at the end of a finished run the averaged weights replace `best.ckpt`
    (what calibration, eval.py and predict.py use): `best.ckpt` *is* the SWA model, and its
    recorded score is its own validation score (batch-norm nets; `null` for nets without
    batch norm, whose averaged weights Lightning never validates: train.py then reports the
    calibration's). The best single-epoch checkpoint before averaging is kept beside it as
    `best_pre_swa.ckpt` (`keep_pre_swa`). A run stopped early before the averaging ended
    keeps its ordinary `best.ckpt`, with a warning.
    """

    PRE_SWA_NAME = "best_pre_swa.ckpt"

    def __init__(
        self,
        swa_lrs: float | list[float],
        swa_epoch_start: int | float = 0.7,
        annealing_epochs: int = 1,
        annealing_strategy: str = "cos",
        device: str | None = None,
        keep_pre_swa: bool = True,
    ) -> None:
        key = "callbacks.swa"
        several = isinstance(swa_lrs, Sequence) and not isinstance(swa_lrs, str)  # a list (or ListConfig)
        lrs: list[Any] = list(cast(Sequence[Any], swa_lrs)) if several else [swa_lrs]
        if not lrs or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf") for v in lrs
        ):
            raise ConfigError(
                f"{key}.swa_lrs={swa_lrs!r} must be a positive number (or a list of them, one per parameter group)"
            )
        lrs = [float(v) for v in lrs]
        if (
            isinstance(swa_epoch_start, bool)
            or not isinstance(swa_epoch_start, (int, float))
            or (isinstance(swa_epoch_start, int) and swa_epoch_start < 1)
            or (isinstance(swa_epoch_start, float) and not 0.0 < swa_epoch_start <= 1.0)
        ):
            raise ConfigError(
                f"{key}.swa_epoch_start={swa_epoch_start!r} must be an epoch (an integer >= 1) or a "
                f"fraction of trainer.max_epochs (a number in (0, 1])"
            )
        if isinstance(annealing_epochs, bool) or not isinstance(annealing_epochs, int) or annealing_epochs < 0:
            raise ConfigError(f"{key}.annealing_epochs={annealing_epochs!r} must be an integer >= 0")
        if annealing_strategy not in ("cos", "linear"):
            raise ConfigError(f"{key}.annealing_strategy={annealing_strategy!r} must be 'cos' or 'linear'")
        if device is not None:
            try:
                torch.device(device)
            except (RuntimeError, TypeError):
                raise ConfigError(
                    f"{key}.device={device!r} must be null (the model's device) or a device such as cpu or cuda"
                ) from None
        if not isinstance(keep_pre_swa, bool):
            raise ConfigError(f"{key}.keep_pre_swa={keep_pre_swa!r} must be true or false")
        super().__init__(
            swa_lrs=lrs if several else lrs[0],
            swa_epoch_start=swa_epoch_start,
            annealing_epochs=annealing_epochs,
            annealing_strategy=cast(Literal["cos", "linear"], annealing_strategy),
            device=device,
        )
        self.keep_pre_swa = keep_pre_swa
        self._pre_swa_kept = False
        self._saving_epoch: int | None = None  # set while on_train_end saves the averaged weights

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._saving_epoch is not None:
            checkpoint["epoch"] = self._saving_epoch

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.max_epochs is None or trainer.max_epochs < 1:
            raise ConfigError(f"callbacks.swa needs a fixed trainer.max_epochs (>= 1), not {trainer.max_epochs}")
        super().on_fit_start(trainer, pl_module)
        if self.swa_start > self.swa_end:
            raise ConfigError(
                f"callbacks.swa.swa_epoch_start={self._swa_epoch_start} starts after the last epoch "
                f"(trainer.max_epochs={self._max_epochs})"
            )

    @staticmethod
    def _best_checkpoint(trainer: L.Trainer) -> ModelCheckpoint | None:
        return next(
            (c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor and c.dirpath),
            None,
        )

    def _keep_pre_swa(self, trainer: L.Trainer) -> None:
        """Copy the best single-epoch checkpoint to best_pre_swa.ckpt (once, rank 0)."""
        cb = self._best_checkpoint(trainer)
        if self._pre_swa_kept or not self.keep_pre_swa or cb is None or not cb.best_model_path:
            return
        self._pre_swa_kept = True
        assert cb.dirpath is not None  # _best_checkpoint: one with a dirpath
        if trainer.is_global_zero and Path(cb.best_model_path).is_file():
            source = Path(cb.best_model_path)  # copied under a temporary name, then renamed (a full disk: one line)
            atomic_write(
                Path(cb.dirpath) / self.PRE_SWA_NAME,
                lambda tmp: shutil.copy2(source, tmp),
                needed=source.stat().st_size,
            )

    def _add_last_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Average in the weights at the end of the last epoch (Lightning stops one short)."""
        if (
            self._average_model is not None
            and self.n_averaged is not None
            and self._latest_update_epoch < trainer.current_epoch
        ):
            self.update_parameters(self._average_model, pl_module, self.n_averaged, self._avg_fn)
            self._latest_update_epoch = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._model_contains_batch_norm and trainer.current_epoch == self.swa_end + 1:
            self._keep_pre_swa(trainer)  # before the batch-norm epoch's validation may replace best.ckpt
            self._add_last_epoch(trainer, pl_module)  # then Lightning moves the average into the module
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the trainer's epoch counter is one past the last epoch here
        last = trainer.current_epoch - 1
        finished = last == self.swa_end + 1 if self._model_contains_batch_norm else last == self.swa_end
        if finished and not self._model_contains_batch_norm:
            self._add_last_epoch(trainer, pl_module)  # then Lightning moves the average into the module
        super().on_train_end(trainer, pl_module)
        if trainer.fast_dev_run:  # type: ignore[attr-defined]  # set on the Trainer by Lightning's connectors, not declared
            return
        if not finished:
            log.warning(
                "callbacks.swa: the run ended at epoch %d, before the weight averaging finished (epoch %d): "
                "best.ckpt holds the best single epoch, not averaged weights",
                last + 1,
                self.swa_end + 1,
            )
            return
        cb = self._best_checkpoint(trainer)
        if cb is None:
            log.warning("callbacks.swa: no checkpoint callback with a monitor: the averaged weights are not saved")
            return
        self._keep_pre_swa(trainer)
        assert cb.dirpath is not None and cb.monitor is not None  # _best_checkpoint: one with both
        path = cb.best_model_path or cb.format_checkpoint_name({})
        score = trainer.callback_metrics.get(cb.monitor) if self._model_contains_batch_norm else None
        score = score.detach().clone().cpu() if isinstance(score, torch.Tensor) else None
        cb.best_model_path = cb.kth_best_model_path = path
        cb.best_model_score = score
        cb.best_k_models = {path: score} if score is not None else {}
        # saved after the last epoch ended, when Lightning's epoch counter is already past it:
        # on_save_checkpoint records the last epoch that ran instead
        self._saving_epoch = trainer.current_epoch - 1
        try:
            trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint, like ModelCheckpoint's
        finally:
            self._saving_epoch = None
        averaged = f"the weights after epochs {self.swa_start}-{self.swa_end + 1}" + (
            " (0: the initial weights)" if self.swa_start == 0 else ""
        )
        scored = (
            f"{cb.monitor} = {float(score):.4f} after the batch-norm update"
            if score is not None
            else "not validated during training (no batch norm): calibration scores it"
        )
        kept = f"; the best single epoch is kept as {Path(cb.dirpath) / self.PRE_SWA_NAME}" if self.keep_pre_swa else ""
        log.info("callbacks.swa: %s now holds the average of %s (%s)%s", path, averaged, scored, kept)
