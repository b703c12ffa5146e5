"""Ask-and-tell over Hydra's launcher: each batch of trials is asked from the study, launched
as jobs, and told back. A job reopens its own trial through `optuna.storage`, `optuna.study`
and `optuna.trial` in its config (pneumonia.runners.trial), reports `monitor` every epoch,
and marks itself pruned when the study's pruner says so; the sweeper leaves such a trial as
the job left it. Stale trials (a worker that died: no heartbeat for `grace_period`) are
failed and run again by whichever worker asks next."""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.errors import HydraException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

log = logging.getLogger(__name__)

PRUNER_ATTR = "pneumonia:pruner"  # the trial's system attribute holding the pruner's settings for its job
JOB_KEY = "optuna"  # the config node of the job that gets storage, study and trial number


class SweepError(Exception):
    """A setting the sweep cannot run with: printed as one `error:` line (exit status 2)."""


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


# --- the search space: Hydra's sweep syntax to Optuna distributions ---


def distribution(override: Override) -> BaseDistribution | str:
    """One `key=<sweep>` as an Optuna distribution; a plain `key=value` as its string (fixed)."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    if override.is_choice_sweep() or (override.is_range_sweep() and override.value().shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        return CategoricalDistribution(choices)
    value = override.value()
    if override.is_range_sweep():  # Hydra's range: stop excluded, as in a grid sweep
        assert isinstance(value, RangeSweep)
        values = list(override.sweep_iterator())
        if not values:
            raise SweepError(f"{key}={override.get_value_element_as_str()} holds no value")
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=int(value.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if value.start >= value.end:
            raise SweepError(f"{key}: interval({value.start}, {value.end}) needs start < end")
        if log_scale and value.start <= 0:
            raise SweepError(f"{key}: tag(log, interval({value.start}, {value.end})) needs start > 0")
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise SweepError(
        f"{override.input_line}: the Optuna sweeper takes choice(), range(), interval() and tag(log, interval()) sweeps"
    )


def search_space(arguments: Sequence[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """`hydra.sweeper.params` and the command line's overrides: the distributions to search
    and the fixed overrides every job gets (in their order)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(arguments))
    except HydraException as err:
        raise SweepError(f"cannot read the search space: {str(err).strip().splitlines()[0]}") from None
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in parsed:
        key = override.get_key_element()
        value = distribution(override)
        if isinstance(value, BaseDistribution):
            space[key] = value
            fixed.pop(key, None)
        else:  # a plain value on the command line replaces the search space's entry
            fixed[key] = value
            space.pop(key, None)
    return space, fixed


def grid_values(key: str, dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, (IntDistribution, FloatDistribution)) and dist.step is not None and not dist.log:
        n = int(round((dist.high - dist.low) / dist.step)) + 1
        return [dist.low + i * dist.step for i in range(n)]
    raise SweepError(
        f"hydra/sweeper/sampler=grid needs discrete parameters: {key} is an interval; "
        "give it as choice(...) or range(...)"
    )


_PLAIN = re.compile(r"[A-Za-z0-9_./:@+\-]+")
_OTHER_TYPE = re.compile(r"(?i)([+-]?\d[\d_]*(\.\d*)?(e[+-]?\d+)?|[+-]?\.\d+(e[+-]?\d+)?|true|false|null|[+-]?inf|nan)")


def override(key: str, value: Any) -> str:
    """`key=value` as Hydra reads it back: strings quoted when they hold other characters or
    would read as a number, a boolean or null."""
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if value is None:
        return f"{key}=null"
    if isinstance(value, (int, float)):
        return f"{key}={value!r}"
    text = str(value)
    if text.startswith(("[", "{")) or (_PLAIN.fullmatch(text) and not _OTHER_TYPE.fullmatch(text)):
        return f"{key}={text}"  # lists and dicts come encoded by Hydra already; plain words as they are
    if "'" not in text:
        return f"{key}='{text}'"
    if '"' not in text:
        return f'{key}="{text}"'
    raise SweepError(f"{key}: a value with both quote characters cannot be passed on: {text}")


# --- samplers, pruners, storage ---


def build(kind: str, settings: Any, **extra: Any) -> Any:
    """An Optuna sampler or pruner from its `_target_` and settings; a refusal is one line."""
    spec = dict(OmegaConf.to_container(settings, resolve=True)) if OmegaConf.is_config(settings) else dict(settings)
    target = spec.pop("_target_", None)
    try:
        cls = get_class(str(target))
    except Exception:  # noqa: BLE001  (hydra's error holds the whole import traceback)
        raise SweepError(f"hydra.sweeper.{kind}._target_={target!r} is not an importable class") from None
    try:
        return cls(**spec, **extra)
    except Exception as err:  # noqa: BLE001  (TypeError, ValueError, ImportError of a missing extra package...)
        raise SweepError(
            f"hydra.sweeper.{kind} ({target}): {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
        ) from None


def check_pruner(spec: dict[str, Any]) -> None:
    """Settings Optuna's pruners accept but fail on later, in every job's first report."""
    rf = spec.get("reduction_factor")
    if rf is not None and (isinstance(rf, bool) or not isinstance(rf, int) or rf < 2):
        raise SweepError(f"hydra.sweeper.pruner.reduction_factor={rf!r} must be an integer >= 2")
    low, high = spec.get("min_resource"), spec.get("max_resource")
    for key, value in (("min_resource", low), ("max_resource", high)):
        if (
            value is not None
            and value != "auto"
            and (isinstance(value, bool) or not isinstance(value, int) or value < 1)
        ):
            raise SweepError(f"hydra.sweeper.pruner.{key}={value!r} must be an integer >= 1 or auto")
    if isinstance(low, int) and isinstance(high, int) and high < low:
        raise SweepError(f"hydra.sweeper.pruner.max_resource={high} is below min_resource={low}")


def storage_url(storage: str | None, sweep_dir: str) -> str:
    if storage is None or str(storage).strip() == "":
        folder = Path(sweep_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'optuna.db'}"
    url = str(storage)
    if not re.match(r"^(sqlite|postgresql|mysql|oracle|mssql)(\+\w+)?://", url):
        raise SweepError(
            f"hydra.sweeper.storage={url!r} is not a database URL: sqlite:///path/optuna.db, "
            "postgresql://user@host/db or mysql://user@host/db (null: SQLite in the sweep folder)"
        )
    return url


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def open_storage(
    url: str, heartbeat_interval: int | None, grace_period: int | None, max_retry: int
) -> optuna.storages.RDBStorage:
    from optuna.storages import RDBStorage

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers on one file wait for its lock
    last: Exception | None = None
    for attempt in range(3):  # two workers creating the tables at once: the second one retries
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                kwargs: dict[str, Any] = {}
                if heartbeat_interval:
                    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
                    kwargs = {
                        "heartbeat_interval": int(heartbeat_interval),
                        "grace_period": grace_period,
                        "heartbeat_stale_trial_callback": retry,
                    }
                return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except ImportError as err:
            raise SweepError(
                f"hydra.sweeper.storage={redact(url)}: its database driver is not installed "
                f"({err}); for PostgreSQL: pip install 'psycopg[binary]'"
            ) from None
        except Exception as err:  # noqa: BLE001  (sqlalchemy's errors: unreachable server, bad login, locked file)
            last = err
            time.sleep(0.3 * (attempt + 1))
    first = str(last).strip().splitlines()[0] if last else ""
    raise SweepError(f"hydra.sweeper.storage={redact(url)}: cannot open the study database: {first}")


def tell(study: optuna.Study, trial: Any, value: float | None = None, state: TrialState | None = None) -> None:
    """`study.tell`; the grid sampler's "grid done" (`Study.stop`, meant for `optimize`) is not an
    error here: the trial is stored before it is raised, and `n_trials` already stops at the grid's size."""
    try:
        study.tell(trial, value, state=state, skip_if_finished=True)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


class Heartbeat:
    """Marks the running trials of this worker as alive every `interval` seconds, while their
    jobs run (in this process or elsewhere: the sweeper waits for them)."""

    def __init__(self, storage: Any, trial_ids: list[int], interval: int | None) -> None:
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self.beat()
            self.thread = threading.Thread(target=self.run, daemon=True, name="optuna-heartbeat")
            self.thread.start()
        return self

    def beat(self) -> None:
        for trial_id in self.trial_ids:
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception as err:  # noqa: BLE001  (a database hiccup must not end the sweep)
                log.warning("heartbeat of trial id %d not recorded: %s", trial_id, err)

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.beat()

    def __exit__(self, *exc: Any) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join()


class OptunaSweeperImpl:
    def __init__(
        self,
        *,
        sampler: Any,
        pruner: Any,
        direction: str,
        storage: str | None,
        study_name: str,
        n_trials: int,
        total_trials: int | None,
        n_jobs: int,
        max_failure_rate: float,
        heartbeat_interval: int | None,
        grace_period: int | None,
        max_retry: int,
        params: DictConfig | None,
    ) -> None:
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.direction, self.storage, self.study_name = str(direction), storage, str(study_name)
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.total_trials = total_trials
        self.heartbeat_interval, self.grace_period, self.max_retry = heartbeat_interval, grace_period, max_retry
        self.params = params
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = str(config.hydra.sweep.dir)

    def check(self) -> None:
        if self.direction not in ("minimize", "maximize"):
            raise SweepError(f"hydra.sweeper.direction={self.direction!r} must be minimize or maximize")
        for key, low in (("n_trials", 1), ("n_jobs", 1), ("max_retry", 0)):
            if getattr(self, key) < low:
                raise SweepError(f"hydra.sweeper.{key}={getattr(self, key)} must be >= {low}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise SweepError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate} must be in [0, 1]")
        if self.total_trials is not None and self.total_trials < 1:
            raise SweepError(f"hydra.sweeper.total_trials={self.total_trials} must be >= 1 (or null)")
        for key in ("heartbeat_interval", "grace_period"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise SweepError(f"hydra.sweeper.{key}={getattr(self, key)} must be >= 1 second (or null)")

    def sweep(self, arguments: list[str]) -> Any:
        try:
            return self._sweep(arguments)
        except SweepError as err:
            fail(str(err))

    def _sweep(self, arguments: list[str]) -> Any:
        self.check()
        params = [f"{k}={v}" for k, v in (self.params or {}).items()]
        space, fixed = search_space([*params, *arguments])
        if not space:
            raise SweepError("nothing to search: hydra.sweeper.params is empty and the command line holds no sweep")
        n_trials = self.n_trials
        extra: dict[str, Any] = {}
        if str(OmegaConf.select(self.sampler_cfg, "_target_")).endswith("GridSampler"):
            grid = {k: grid_values(k, d) for k, d in space.items()}
            extra = {"search_space": grid}
            n_trials = min(n_trials, math.prod(len(v) for v in grid.values()))
        sampler = build("sampler", self.sampler_cfg, **extra)
        pruner = build("pruner", self.pruner_cfg)
        pruner_spec = OmegaConf.to_container(self.pruner_cfg, resolve=True)
        check_pruner(pruner_spec)
        url = storage_url(self.storage, self.sweep_dir)
        storage = open_storage(url, self.heartbeat_interval, self.grace_period, self.max_retry)
        try:
            study = optuna.create_study(
                study_name=self.study_name,
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                direction=self.direction,
                load_if_exists=True,
            )
        except Exception as err:  # noqa: BLE001  (sqlalchemy errors of a busy or broken database)
            raise SweepError(
                f"study {self.study_name!r} in {redact(url)}: {str(err).strip().splitlines()[0]}"
            ) from None
        if study.direction.name.lower() != self.direction:
            raise SweepError(
                f"study {self.study_name!r} in {redact(url)} was created to "
                f"{study.direction.name.lower()}, not to {self.direction}: give another "
                "hydra.sweeper.study_name or the same monitor_mode"
            )
        study_id = storage.get_study_id_from_name(self.study_name)
        log.info(
            "Study %s in %s (%d trials already), sampler %s, pruner %s, direction %s",
            self.study_name,
            redact(url),
            len(study.trials),
            type(sampler).__name__,
            type(pruner).__name__,
            self.direction,
        )
        pass_on = JOB_KEY in self.config  # the task's config has the node the trial's identity goes to

        done = 0
        while done < n_trials:
            with warnings.catch_warnings():  # heartbeats are ours, recorded while the jobs run
                warnings.simplefilter("ignore")
                optuna.storages.fail_stale_trials(study)
                size = min(self.n_jobs, n_trials - done)
                if self.total_trials is not None:
                    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
                    size = min(size, self.total_trials - len(study.get_trials(deepcopy=False, states=counted)))
                    if size <= 0:
                        log.info(
                            "The study holds hydra.sweeper.total_trials=%d trials: this worker stops", self.total_trials
                        )
                        break
                batch = [study.ask(space) for _ in range(size)]
            overrides = []
            for trial in batch:
                storage.set_trial_system_attr(trial._trial_id, PRUNER_ATTR, pruner_spec)
                job = [override(k, v) for k, v in trial.params.items()]
                job += [f"{k}={v}" for k, v in fixed.items()]
                if pass_on:
                    job += [
                        override(f"{JOB_KEY}.storage", url),
                        override(f"{JOB_KEY}.study", self.study_name),
                        f"{JOB_KEY}.trial={trial.number}",
                    ]
                overrides.append(tuple(job))
            with Heartbeat(storage, [t._trial_id for t in batch], self.heartbeat_interval):
                try:
                    returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                except BaseException as stop:  # a job's SystemExit (its one-line error), Ctrl-C: its trials fail
                    for trial in batch:
                        tell(study, trial, state=TrialState.FAIL)
                    # a job of this process that stopped with its one-line error: one failed batch, which
                    # max_failure_rate may allow (a parameter combination the config refuses)
                    if not (isinstance(stop, SystemExit) and stop.code == 2 and self.max_failure_rate >= 1.0):
                        raise
                    log.warning(
                        "Trials %s failed (the job's error is above); the sweep goes on "
                        "(hydra.sweeper.max_failure_rate=%s)",
                        [t.number for t in batch],
                        self.max_failure_rate,
                    )
                    self.job_idx += len(batch)
                    done += len(batch)
                    continue
            self.job_idx += len(returns)
            failures = 0
            for trial, ret in zip(batch, returns):
                state = storage.get_trial(trial._trial_id).state
                if state.is_finished():  # the job marked it pruned (or another worker failed it as stale)
                    log.info("Trial %d: %s", trial.number, state.name.lower())
                    continue
                if ret.status != JobStatus.COMPLETED:
                    failures += 1
                    tell(study, trial, state=TrialState.FAIL)
                    log.warning("Trial %d failed: %s", trial.number, ret._return_value)
                    continue
                value = ret.return_value
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    value = float("nan")
                if not math.isfinite(value):
                    tell(study, trial, state=TrialState.FAIL)
                    log.warning("Trial %d returned no score (%r): marked failed", trial.number, ret.return_value)
                    continue
                tell(study, trial, value)
            if failures / len(returns) > self.max_failure_rate:
                log.error(
                    "%d of %d jobs failed (hydra.sweeper.max_failure_rate=%s)",
                    failures,
                    len(returns),
                    self.max_failure_rate,
                )
                for ret in returns:
                    ret.return_value  # noqa: B018  (re-raises the job's own error)
            done += len(batch)
        return self.report(study, url, study_id)

    def report(self, study: optuna.Study, url: str, study_id: int) -> dict[str, Any]:
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": self.study_name,
            "storage": redact(url),
            "trials": {k: v for k, v in counts.items() if v},
        }
        try:
            best = study.best_trial
        except ValueError:
            log.warning("No trial of study %s completed: no best parameters", self.study_name)
        else:
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
            log.info("Best parameters: %s", best.params)
            log.info("Best value: %s (trial %d)", best.value, best.number)
        log.info("Trials in the study: %s", ", ".join(f"{v} {k}" for k, v in results["trials"].items()))
        Path(self.sweep_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), Path(self.sweep_dir) / "optimization_results.yaml")
        return results
