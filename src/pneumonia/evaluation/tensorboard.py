"""The TensorBoard loggers among a run's Lightning loggers (figures and text go there)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def tensorboard_loggers(loggers: Iterable[Any]) -> list[Any]:
    """The `TensorBoardLogger`s in `loggers` (`.experiment` is their SummaryWriter)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return [logger for logger in loggers if isinstance(logger, TensorBoardLogger)]
