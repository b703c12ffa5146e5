"""Project callbacks that Lightning does not ship."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pneumonia.errors import UserError


class NonFiniteLossError(UserError):
    """Training diverged; the message says which checkpoint is the last good one."""


class FiniteLossGuard(L.Callback):
    """Stop at the first NaN/inf training loss, before it reaches any checkpoint.

    Lightning's EarlyStopping(check_finite) only looks at the monitored validation metric
    once per epoch, after the weights are already ruined and possibly saved as last.ckpt.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or torch.isfinite(loss).all():
            return
        saved = [Path(c.dirpath) / "last.ckpt" for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None)]
        ckpt = next((p for p in saved if p.is_file()), None)
        last_good = f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"non-finite training loss ({float(loss.detach().float())}) at epoch {trainer.current_epoch}, "
            f"batch {batch_idx}; {last_good}. Try a lower optimizer.lr or trainer.gradient_clip_val=1.0"
        )


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
