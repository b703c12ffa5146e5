"""The Sweeper Hydra instantiates from `hydra.sweeper`; Optuna is imported only when a sweep
runs (Hydra imports this module at every start)."""

from __future__ import annotations

from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: str,
        storage: Optional[str],
        study_name: str,
        n_trials: int,
        total_trials: Optional[int],
        n_jobs: int,
        max_failure_rate: float,
        heartbeat_interval: Optional[int],
        grace_period: Optional[int],
        max_retry: int,
        params: Optional[DictConfig],
    ) -> None:
        from ._impl import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(
            sampler=sampler,
            pruner=pruner,
            direction=direction,
            storage=storage,
            study_name=study_name,
            n_trials=n_trials,
            total_trials=total_trials,
            n_jobs=n_jobs,
            max_failure_rate=max_failure_rate,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            max_retry=max_retry,
            params=params,
        )

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self.sweeper.sweep(arguments)
