"""A sweep job's own Optuna trial. The `hparams_search=optuna` sweeper
(src/hydra_plugins/pneumonia_optuna) passes each job `optuna.storage`, `optuna.study` and
`optuna.trial`; the job reopens that trial in the shared storage (any process, any machine),
reports `monitor` after every epoch, and when the study's pruner says so it stops after that
epoch like an early stop: its checkpoints, threshold and summary are kept, and the trial is
marked pruned (its value: the last reported one). In DDP only rank 0 opens the storage; its
decision reaches every rank by a broadcast."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
from omegaconf import DictConfig

from pneumonia.errors import ConfigError

log = logging.getLogger(__name__)

PRUNER_ATTR = "pneumonia:pruner"  # written by the sweeper: the pruner's settings, as hydra.sweeper.pruner


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def build_pruner(spec: Any) -> Any:
    """The pruner the sweeper stored with the trial; only classes of `optuna.pruners` (the
    database is shared: it must not name code to run)."""
    import optuna

    if not spec:
        return optuna.pruners.NopPruner()
    spec = dict(spec)
    target = str(spec.pop("_target_", ""))
    name = target.rpartition(".")[2]
    cls = getattr(optuna.pruners, name, None) if target.startswith("optuna.pruners.") else None
    if not isinstance(cls, type):
        raise ConfigError(f"the study's pruner {target!r} is not a class of optuna.pruners")
    try:
        return cls(**spec)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"the study's pruner {target}: {err}") from None


def open_trial(storage: str, study: str, number: int) -> Any:
    """The running trial `number` of study `study` in `storage`, with the study's pruner."""
    import optuna

    where = f"optuna.trial={number} of optuna.study={study}"
    try:
        rdb = optuna.storages.RDBStorage(
            storage,
            engine_kwargs={"connect_args": {"timeout": 60}}
            if storage.startswith("sqlite")
            else {"pool_pre_ping": True},
        )
    except ImportError as err:
        raise ConfigError(f"optuna.storage: its database driver is not installed ({err})") from None
    except Exception as err:  # noqa: BLE001  (sqlalchemy: unreachable server, bad URL, no such file)
        raise ConfigError(f"optuna.storage: cannot open the study database: {_first_line(err)}") from None
    try:
        study_id = rdb.get_study_id_from_name(study)
        trial_id = rdb.get_trial_id_from_study_id_trial_number(study_id, number)
    except KeyError:
        raise ConfigError(f"{where}: no such study or trial in optuna.storage") from None
    pruner = build_pruner(rdb.get_trial_system_attrs(trial_id).get(PRUNER_ATTR))
    loaded = optuna.load_study(study_name=study, storage=rdb, pruner=pruner)
    return optuna.trial.Trial(loaded, trial_id)


class TrialReporter(L.Callback):
    """Reports `monitor` to the trial after each epoch (step = the epoch, counted from 1) and
    stops the run when the trial should be pruned."""

    def __init__(self, storage: str, study: str, number: int, monitor: str) -> None:
        self.storage, self.study, self.number, self.monitor = storage, study, number, monitor
        self.trial: Any = None
        self.pruned_epoch: int | None = None

    def open(self) -> None:
        """Rank 0 (or the only process): open the trial now, before decoding, so a wrong
        storage or trial is one line at the start."""
        from optuna.trial import TrialState

        self.trial = open_trial(self.storage, self.study, self.number)
        state = self.trial.study._storage.get_trial(self.trial._trial_id).state
        if state != TrialState.RUNNING:
            log.warning(
                "optuna.trial=%d is %s already: this run reports nothing to it", self.number, state.name.lower()
            )
            self.trial = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.trial is None and self.pruned_epoch is None:
            self.open()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        prune = False
        if trainer.is_global_zero and self.trial is not None:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None and math.isfinite(float(value)):
                import optuna

                try:
                    self.trial.report(float(value), step=epoch)
                    prune = self.trial.should_prune()
                except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale by a worker, told elsewhere
                    log.warning("optuna.trial=%d was finished by another process: no more reports", self.number)
                    self.trial = None
                except Exception as err:  # noqa: BLE001  (a pruner setting Optuna accepted but cannot use)
                    raise ConfigError(
                        f"the study's pruner ({type(self.trial.study.pruner).__name__}) failed at "
                        f"epoch {epoch}: {type(err).__name__}: {_first_line(err)}"
                    ) from None
        if trainer.world_size > 1:
            prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned_epoch = epoch
            trainer.should_stop = True
            log.info(
                "Pruned: %s = %.4f at epoch %d is below the study's pruner's bar (optuna.trial=%d)",
                self.monitor,
                float(trainer.callback_metrics[self.monitor])
                if self.monitor in trainer.callback_metrics
                else float("nan"),
                epoch,
                self.number,
            )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.trial is not None and self.pruned_epoch is not None:
            from optuna.trial import TrialState

            self.trial.study.tell(self.number, state=TrialState.PRUNED, skip_if_finished=True)


def trial_reporter(cfg: DictConfig) -> TrialReporter | None:
    """The reporter of a sweep job (`optuna.trial` set), None otherwise."""
    node = cfg.get("optuna") or {}
    number = node.get("trial")
    if number is None:
        return None
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ConfigError(f"optuna.trial={number!r} must be a trial number (an integer >= 0) or null")
    for key in ("storage", "study"):
        if not isinstance(node.get(key), str) or not node.get(key):
            raise ConfigError(f"optuna.trial={number} needs optuna.{key} (the sweeper sets all three)")
    return TrialReporter(node["storage"], node["study"], number, str(cfg.monitor))
