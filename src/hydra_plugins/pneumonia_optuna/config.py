"""The sweeper's settings (`hydra.sweeper.*`) and its sampler and pruner options, as Hydra
structured configs: a misspelt key fails when the config is composed, before any job.

    python train.py -m hparams_search=optuna hydra/sweeper/sampler=random hydra/sweeper/pruner=hyperband
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# --- samplers (hydra/sweeper/sampler=<name>); every one takes `seed` ---


@dataclass
class TPESamplerConfig:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    n_startup_trials: int = 5  # random trials before TPE takes over (Optuna's default is 10; 5 suits ~20 trials)
    n_ei_candidates: int = 24
    multivariate: bool = False
    group: bool = False
    constant_liar: bool = False  # true: trials running at the same time (n_jobs > 1, several workers) avoid each other


@dataclass
class RandomSamplerConfig:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class CmaEsSamplerConfig:
    _target_: str = "optuna.samplers.CmaEsSampler"  # numbers only: choice() parameters are drawn at random
    seed: Optional[int] = None
    n_startup_trials: int = 1
    sigma0: Optional[float] = None
    use_separable_cma: bool = False
    with_margin: bool = False  # true: for int and range() parameters
    warn_independent_sampling: bool = False


@dataclass
class GridSamplerConfig:
    _target_: str = "optuna.samplers.GridSampler"  # every combination once; choice() and range() parameters only
    seed: Optional[int] = None


# --- pruners (hydra/sweeper/pruner=<name>); a step is an epoch, counted from 1 ---


@dataclass
class NopPrunerConfig:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConfig:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # finished trials before any is pruned
    n_warmup_steps: int = 1  # epochs before pruning: the earliest a trial stops is after this epoch
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConfig:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"  # epochs a trial runs before the first rung; auto: from the first finished trials
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConfig:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"  # trainer.max_epochs, or auto: the epochs of the first finished trial
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class ThresholdPrunerConfig:
    _target_: str = "optuna.pruners.ThresholdPruner"  # stop a trial whose `monitor` leaves [lower, upper]
    lower: Optional[float] = None
    upper: Optional[float] = None
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.pneumonia_optuna.sweeper.OptunaSweeper"
    _recursive_: bool = False  # the sweeper builds its sampler (grid: with the space) and pruner itself
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    direction: str = "minimize"  # minimize | maximize (the value each job returns)
    # the study's database: null = SQLite in the sweep folder (<sweep dir>/optuna.db); or a URL that
    # several workers share: sqlite:///path/optuna.db (one machine), postgresql://user@host/db, mysql://...
    storage: Optional[str] = None
    study_name: str = "pneumonia"  # a study that exists in the storage is continued
    n_trials: int = 20  # trials this sweep (this worker) runs at most
    # several workers: stop asking once the study holds this many trials (finished, pruned, running or waiting for
    # a retry), whoever ran them; a worker checks before each batch, so two may overshoot by a batch. null: no limit
    total_trials: Optional[int] = None
    n_jobs: int = 1  # trials launched at once (a batch for the launcher)
    max_failure_rate: float = 0.0  # failed jobs per batch above this stop the sweep
    heartbeat_interval: Optional[int] = 60  # seconds between "still running" marks of a trial; null: off
    grace_period: Optional[int] = None  # a running trial without a mark for this long is failed (null: 2 heartbeats)
    max_retry: int = 1  # a failed stale trial (its worker died) is run again this often, by any worker
    params: Optional[Dict[str, str]] = (
        None  # the search space, Hydra's sweep syntax: choice(), range(), interval(), tag(log, ...)
    )


_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="pneumonia_optuna", node=OptunaSweeperConf, provider="pneumonia")
for _name, _node in (
    ("tpe", TPESamplerConfig),
    ("random", RandomSamplerConfig),
    ("cmaes", CmaEsSamplerConfig),
    ("grid", GridSamplerConfig),
):
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="pneumonia")
for _name, _node in (
    ("none", NopPrunerConfig),
    ("median", MedianPrunerConfig),
    ("successive_halving", SuccessiveHalvingPrunerConfig),
    ("hyperband", HyperbandPrunerConfig),
    ("threshold", ThresholdPrunerConfig),
):
    _store.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="pneumonia")
