"""`train(cfg)`: everything `python train.py` does, callable from tests and sweeps."""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from pneumonia.runners.checks import check_train_config
from pneumonia.config.entry import cli_override
from pneumonia.config.plain import to_dict
from pneumonia.config.rundir import make_output_dir
from pneumonia.data.datamodule import ChestXrayDataModule
from pneumonia.errors import ConfigError
from pneumonia.evaluation.artefacts import TrainSummary, write_train_summary
from pneumonia.evaluation.calibration import check_settings
from pneumonia.runners.calibration import Calibrated, calibrate_threshold
from pneumonia.evaluation.metrics import METRIC_NAMES
from pneumonia.evaluation.tables import markdown_table
from pneumonia.evaluation.tensorboard import tensorboard_loggers
from pneumonia.inference.checkpoint import (
    data_settings,
    is_calibrated,
    load_checkpoint,
    module_settings,
    trained_epochs,
)
from pneumonia.io import disk_full
from pneumonia.models.classifier import PneumoniaClassifier
from pneumonia.runners.callbacks import (
    Interruption,
    SigtermBeforeFit,
    StochasticWeightAveraging,
    TerminatedBeforeFit,
    TrainingClock,
)
from pneumonia.runners.checkpoint_io import AtomicCheckpointIO
from pneumonia.runners.distill import distill_weight
from pneumonia.runners.common import (
    build_callbacks,
    build_loggers,
    build_trainer,
    configure_torch,
    ddp_ranks_run_this_job,
    warn_slow_precision,
)
from pneumonia.runners.trial import TrialReporter, trial_reporter
from pneumonia.tracking.mlflow_run import finish_training_run, start_training_run
from pneumonia.tracking.wandb_run import finish_wandb_run, start_wandb_run, wandb_note

log = logging.getLogger(__name__)


def balance_pos_weight(cfg: DictConfig, module: PneumoniaClassifier, datamodule: ChestXrayDataModule) -> None:
    """`module.pos_weight: balanced`: n_normal / n_pneumonia of the training split, known once
    the DataModule is set up, into the module built before decoding."""
    if cfg.module.pos_weight != "balanced":
        return
    counts = datamodule.class_counts("train")
    pos_weight = float(counts[0]) / float(counts[1])
    log.info("pos_weight=balanced: %.3f (normal %d / pneumonia %d)", pos_weight, counts[0], counts[1])
    module.set_pos_weight(pos_weight)


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """Scalar settings for TensorBoard's HPARAMS tab (lists as strings, paths left out)."""
    keep = (
        "seed",
        "monitor",
        "model",
        "data",
        "optimizer",
        "scheduler",
        "trainer",
        "module",
        "threshold",
        "calibration",
    )
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

    container = to_dict(cfg, resolve=True)
    for key in keep:
        walk(key, container.get(key))
    for noisy in ("data.root", "data.cache_dir", "data.bad_image_report", "trainer.default_root_dir"):
        flat.pop(noisy, None)
    return flat


def check_same_recipe(cfg: DictConfig, ckpt: dict[str, Any], key: str) -> None:
    """The network and input a resumed run builds must be the checkpoint's, or its weights do
    not fit (Lightning's multi-line state-dict error, after decoding): one line naming the
    differing keys and the first run's overrides instead."""
    stored_net, stored_data = module_settings(ckpt).get("net") or {}, data_settings(ckpt)
    net = to_dict(cfg.model, resolve=True)
    differ = [
        f"model.{k}={net.get(k)!r} (the checkpoint: {v!r})"
        for k, v in stored_net.items()
        if not str(k).startswith("_") and net.get(k) != v
    ]
    differ += [
        f"data.{k}={cfg.data.get(k)!r} (the checkpoint: {stored_data[k]!r})"
        for k in ("image_size", "channels")
        if k in stored_data and cfg.data.get(k) != stored_data[k]
    ]
    # a distilled run goes on with its teacher: without it, the rest of the epochs would silently not be distilled
    stored_weight, weight = float(module_settings(ckpt).get("distill_weight") or 0.0), distill_weight(cfg)
    if stored_weight != weight:
        differ.append(f"distill.weight={weight} with a teacher (the checkpoint: {stored_weight})")
    if differ:
        run = Path(str(cfg.get(key))).parent.parent if key == "ckpt_path" else Path(str(cfg.get(key)))
        first = run / ".hydra" / "overrides.yaml"
        hint = ""
        if first.is_file():
            overrides = [
                str(o)
                for o in (OmegaConf.load(first) or [])
                if not str(o).startswith(("resume=", "ckpt_path=", "hydra."))
            ]
            hint = f"; the first run's overrides were: {' '.join(overrides) or '(none)'}"
        raise ConfigError(
            f"{key}={cfg.get(key)}: this config builds another network than the checkpoint's: "
            f"{'; '.join(differ[:3])}{' ...' if len(differ) > 3 else ''}. Resume with the same "
            f"overrides as the first run{hint}"
        )


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
        ckpt = load_checkpoint(path)  # a clear error now for a missing or foreign file
        check_same_recipe(cfg, ckpt, "resume" if cfg.get("resume") else "ckpt_path")
        done = trained_epochs(ckpt)
        max_epochs = cfg.trainer.max_epochs
        if max_epochs != -1 and done > max_epochs:  # Lightning would refuse it after decoding
            key = "resume" if cfg.get("resume") else "ckpt_path"
            raise ConfigError(
                f"trainer.max_epochs={max_epochs} is below the {done} epochs the checkpoint of "
                f"{key}={cfg.get(key)} already trained (max_epochs counts them): give "
                f"trainer.max_epochs={done + 1} or more to train on"
            )
        log.info("Resuming from %s (%d epochs done)", path, done)
    return path


@dataclass(frozen=True)
class TrainResult:
    """What one training run gives back (`train_run`): its run folder, best checkpoint, best
    `monitor` value, the validation report at the chosen threshold and the calibration record
    (the held-out validation scores among it; None where calibration did not run: DDP ranks
    other than 0, fast_dev_run, no checkpoint written)."""

    run_dir: Path
    best_checkpoint: str  # "" when none was written
    monitor: str
    best_score: float | None  # of `monitor`: what a sweeper optimises
    val_report: dict[str, Any]  # {} without calibration
    calibration: Calibrated | None
    epochs: int


def train(cfg: DictConfig) -> tuple[float | None, dict[str, Any]]:
    """`train_run`, as (best value of `cfg.monitor`, validation report)."""
    result = train_run(cfg)
    return result.best_score, result.val_report


def train_run(cfg: DictConfig) -> TrainResult:
    """Fit, pick the threshold on validation, optionally test (train.py, each member of an
    ensemble, each fold of a cross-validation). A signal ends it with one line and exit
    status 143 (SIGTERM) or 130 (SIGINT): see `stop_interrupted`."""
    sigterm = SigtermBeforeFit()
    try:
        return _train(cfg, sigterm)
    except (KeyboardInterrupt, TerminatedBeforeFit) as err:  # outside Lightning's loops: before training
        import sys

        name = "SIGINT" if isinstance(err, KeyboardInterrupt) else "SIGTERM"
        print(
            f"interrupted by {name} before training started (while checking or decoding): nothing to resume; run "
            "the command again",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(Interruption.EXIT[name]) from None
    except OSError as err:  # a full disk outside the checkpoint writes (logs, summaries): one line too
        full = disk_full(err, err.filename or cfg.paths.output_dir, folder=not err.filename)
        if full is None:
            raise
        raise full from None
    finally:
        sigterm.release()


def _train(cfg: DictConfig, sigterm: SigtermBeforeFit) -> TrainResult:
    parts = check_train_config(cfg)  # the run's one DataModule and one LightningModule
    datamodule, module = parts.datamodule, parts.module
    check_settings(
        to_dict(cfg.calibration) if cfg.get("calibration") else None,
        to_dict(cfg.intervals) if cfg.get("intervals") else None,
        threshold_settings=to_dict(cfg.threshold) if cfg.get("threshold") else None,
    )
    resume_from = resume_checkpoint(cfg)
    reporter = trial_reporter(cfg)  # a job of hparams_search=optuna: its trial, for pruning
    configure_torch(cfg.get("threads"))
    out_dir = make_output_dir(cfg.paths.output_dir)

    datamodule.check_layout(("fit", "test") if cfg.test else ("fit",))  # fail before any decoding
    if module.hparams.get("distill_weight"):  # the teacher read (and matched to the inputs) before decoding too
        from pneumonia.runners.distill import load_teacher

        module.teacher = load_teacher(cfg)
    # loggers, callbacks and the Trainer before decoding too: their settings fail in seconds
    loggers = build_loggers(cfg)
    clock, interruption = TrainingClock(), Interruption()
    callbacks = [
        *build_callbacks(cfg, has_logger=bool(loggers)),
        clock,
        interruption,
        *([reporter] if reporter else []),
    ]
    trainer = build_trainer(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
    warn_slow_precision(trainer)
    if reporter is not None and trainer.is_global_zero and rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # DDP: ranks may not be set yet
        reporter.open()  # a wrong storage or trial fails now, before decoding
    datamodule.setup("fit")
    balance_pos_weight(cfg, module, datamodule)
    start_training_run(loggers, cfg, datamodule, trainer, out_dir)
    start_wandb_run(loggers, cfg, datamodule, trainer, out_dir)

    sigterm.release()  # Lightning's handler from here: it stops at the next batch
    try:
        with ddp_ranks_run_this_job():  # a sweep's job: ranks 1.. train this job, not a sweep of their own
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except SystemExit:  # Lightning's ending for SIGTERM and Ctrl-C (exit status 0 and 1)
        if interruption.signal is None:
            raise
        stop_interrupted(trainer.is_global_zero, interruption, out_dir)
    if trainer.interrupted:
        log.warning("Training was interrupted; resume with ckpt_path=%s", out_dir / "checkpoints" / "last.ckpt")

    checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    checkpoint = next((c for c in checkpoints if c.monitor), checkpoints[0] if checkpoints else None)
    best_path = checkpoint.best_model_path if checkpoint else ""
    best_score = float(checkpoint.best_model_score) if checkpoint and checkpoint.best_model_score is not None else None
    val_report: dict[str, Any] = {}
    calibrated: Calibrated | None = None
    if trainer.world_size > 1:
        trainer.strategy.barrier()
        if not trainer.is_global_zero:  # rank 0 alone calibrates and writes the summaries
            return TrainResult(
                out_dir, best_path, str(cfg.monitor), best_score, val_report, None, trainer.current_epoch
            )
    if best_path and not trainer.fast_dev_run:  # type: ignore[attr-defined]  # set by Lightning's connectors, not declared
        # a plain one-device Trainer: after DDP, collective ops on rank 0 alone would hang
        solo = L.Trainer(
            accelerator=cfg.trainer.accelerator,
            devices=1,
            precision=cfg.trainer.precision,
            logger=loggers or False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            callbacks=[interruption],
        )
        try:  # a signal here: Lightning's SystemExit (predict/test) or a KeyboardInterrupt outside them
            calibrated = after_training(cfg, solo, datamodule, best_path, out_dir, loggers, trainer.current_epoch)
            val_report = calibrated.val_report
        except (SystemExit, KeyboardInterrupt) as err:
            if isinstance(err, KeyboardInterrupt):
                interruption.signal = "SIGINT"
            elif interruption.signal is None:
                raise
            stop_interrupted(True, interruption, out_dir, after_training=best_path)
        if best_score is None and cfg.monitor.startswith("val/"):  # the same split, scored after training
            best_score = val_report.get(cfg.monitor.split("/", 1)[-1])

    summary = TrainSummary(
        best_checkpoint=best_path,
        monitor=cfg.monitor,
        best_score=best_score,
        epochs=trainer.current_epoch,
        # all sessions of a resumed run (TrainingClock), and this process alone
        train_minutes=round(clock.seconds / 60, 2),
        train_seconds=round(clock.seconds, 1),
        session_train_seconds=round(clock.session_seconds, 1),
        val=val_report,
        # sweep_summary lists a pruned job as "pruned at epoch E"
        trial=reporter.number if reporter is not None else None,
        pruned_at_epoch=reporter.pruned_epoch if reporter is not None else None,
    )
    write_train_summary(out_dir, summary)
    digest = calibrated.digest if calibrated is not None else None  # of best.ckpt as calibration wrote it
    if not trainer.fast_dev_run:  # type: ignore[attr-defined]  # set by Lightning's Trainer, undeclared
        finish_training_run(
            loggers,
            out_dir,
            best_path,
            val_report,
            METRIC_NAMES,
            log_checkpoint=bool((cfg.get("mlflow") or {}).get("log_checkpoint", True)),
            digest=digest,
        )
        finish_wandb_run(loggers, out_dir, best_path, val_report, METRIC_NAMES, digest=digest)
    log.info("%s", ending(trainer, cfg, best_score, best_path, out_dir, val_report, calibrated))
    return TrainResult(
        run_dir=out_dir,
        best_checkpoint=best_path,
        monitor=str(cfg.monitor),
        best_score=best_score,
        val_report=val_report,
        # the module stays behind: the record is what later steps (out-of-fold scores) need
        calibration=None if calibrated is None else replace(calibrated, module=None),
        epochs=trainer.current_epoch,
    )


def after_training(
    cfg: DictConfig,
    solo: L.Trainer,
    datamodule: ChestXrayDataModule,
    best_path: str,
    out_dir: Path,
    loggers: list[Any],
    epoch: int,
) -> Calibrated:
    """Choose and store best.ckpt's threshold on validation (the one read of best.ckpt after
    training, the one LightningModule built from it), log it, score test/ with that module when
    asked; the calibration record."""
    calibrated = calibrate_threshold(
        solo,
        datamodule,
        best_path,
        to_dict(cfg.threshold),
        out_dir,
        calibration=to_dict(cfg.calibration) if cfg.get("calibration") else None,
        interval_settings=to_dict(cfg.intervals) if cfg.get("intervals") else None,
    )
    val_report = calibrated.val_report
    hp_metrics = {f"hp/val_{k}": val_report[k] for k in (*METRIC_NAMES, "threshold")}
    for tb in tensorboard_loggers(loggers):
        tb.log_hyperparams(flat_hparams(cfg), metrics=hp_metrics)
        tb.experiment.add_text("val/metrics", markdown_table(val_report), global_step=epoch)
    if cfg.test:
        assert calibrated.module is not None  # calibrate_threshold returns the module it built
        solo.test(calibrated.module, datamodule=datamodule)
    return calibrated


def stop_interrupted(
    is_global_zero: bool, interruption: Interruption, out_dir: Path, after_training: str | None = None
) -> None:
    """One line on where a signal stopped the run and how to go on, then exit 143 (SIGTERM) or
    130 (SIGINT). last.ckpt stays the one of the last finished epoch: a checkpoint from the
    middle of an epoch would not resume exactly like an uninterrupted run. `after_training`:
    the best checkpoint, when training was over (calibration or the test scoring was stopped)."""
    import signal
    import sys

    from pneumonia.inference.predictor import RECALIBRATE

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores Ctrl-C from here on
    if is_global_zero:
        last = out_dir / "checkpoints" / "last.ckpt"
        if after_training and not is_calibrated(load_checkpoint(after_training)):
            line = (
                f"interrupted by {interruption.signal} while choosing the threshold on validation (training is "
                f"done); calibrate with: python -m {RECALIBRATE} {shlex.quote(str(after_training))}"
            )
        elif after_training:
            line = (
                f"interrupted by {interruption.signal} while scoring test/ (training and calibration are done); "
                f"score it with: python eval.py {cli_override('ckpt_path', after_training)}"
            )
        else:
            line = f"interrupted at epoch {interruption.epoch + 1}, step {interruption.step} by {interruption.signal}"
            if last.is_file():
                line += (
                    f"; resume with: python train.py {cli_override('resume', out_dir)} "
                    f"(goes on after epoch {trained_epochs(load_checkpoint(last))}, from {last.name})"
                )
            else:
                line += ", before the first epoch ended: no checkpoint to resume from; start the run again"
        print(line, file=sys.stderr, flush=True)
    assert interruption.signal is not None  # the callers stop here for a signal only
    raise SystemExit(Interruption.EXIT[interruption.signal])


def ending(
    trainer: L.Trainer,
    cfg: DictConfig,
    best_score: float | None,
    best_path: str,
    out_dir: Path,
    val_report: dict[str, Any] | None = None,
    calibrated: Calibrated | None = None,
) -> str:
    """How the run ended, what it left where, and the command to run next (three lines).
    `calibrated`: calibration's record of best.ckpt (its epoch; the file is not read again)."""
    if trainer.fast_dev_run:  # type: ignore[attr-defined]  # set by Lightning's connectors, not declared
        return "fast_dev_run: one batch of each step ran; no checkpoint is kept and no threshold chosen"
    last = out_dir / "checkpoints" / "last.ckpt"
    stopper = trainer.early_stopping_callback
    # Lightning's SWA runs one epoch past max_epochs to recompute batch norm; best.ckpt then
    # holds the averaged weights (runners.callbacks.StochasticWeightAveraging)
    assert trainer.max_epochs is not None  # Lightning's fit loop always has one (-1: no limit)
    averaged = trainer.current_epoch > trainer.max_epochs and any(
        isinstance(c, StochasticWeightAveraging)
        for c in trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's Trainer, undeclared
    )
    pruned = next((c.pruned_epoch for c in trainer.callbacks if isinstance(c, TrialReporter)), None)  # type: ignore[attr-defined]
    if trainer.interrupted:
        how = f"Interrupted after {trainer.current_epoch} epochs"
    elif pruned is not None:
        how = f"Pruned after epoch {pruned} by the Optuna study's pruner (hydra.sweeper.pruner)"
    elif trainer.should_stop and trainer.current_epoch < trainer.max_epochs and stopper is not None:
        how = (
            f"Stopped early after {trainer.current_epoch} epochs: {stopper.monitor} did not improve for "
            f"{stopper.patience} epochs (callbacks.early_stopping.patience)"
        )
    elif trainer.should_stop and trainer.current_epoch < trainer.max_epochs:
        how = f"Stopped after {trainer.current_epoch} epochs by a callback (see the log above)"
    elif averaged:
        how = (
            f"Trained {trainer.max_epochs} epochs (trainer.max_epochs={trainer.max_epochs}) and one more pass "
            "over the training images for the batch-norm statistics of callbacks.swa's averaged weights"
        )
    else:
        how = f"Trained {trainer.current_epoch} epochs (trainer.max_epochs={trainer.max_epochs})"
    if not best_path:
        return f"{how}; no checkpoint was written (trainer.max_epochs={trainer.max_epochs}?); outputs in {out_dir}"
    if calibrated is not None:
        best_epoch = 0 if calibrated.epoch is None else calibrated.epoch + 1  # as trained_epochs counts
    else:
        best_epoch = trained_epochs(load_checkpoint(best_path))
    limit = cfg.trainer.get("limit_val_batches")
    limited = limit is not None and not (isinstance(limit, float) and limit == 1.0)
    note = (
        f" (on the validation batches that trainer.limit_val_batches={cfg.trainer.limit_val_batches} "
        "kept; val_metrics.json scores the whole validation split)"
        if limited
        else ""
    )
    threshold = (val_report or {}).get("threshold")
    chosen = f" (threshold {threshold:.4f}, chosen on validation)" if threshold is not None else ""
    logs = [name for name in ("tensorboard", "csv") if (out_dir / name).is_dir()]
    where = f"Outputs in {out_dir}: checkpoints/best.ckpt{chosen}, val_metrics.json" + "".join(
        f", {name}/" for name in logs
    )
    tracked = out_dir / "mlflow_run.json"
    if tracked.is_file():
        run = json.loads(tracked.read_text())
        where += f"; MLflow run {run['run_id']} (mlflow ui --backend-store-uri {run['tracking_uri']})"
    where += wandb_note(out_dir)  # every attempt's offline folder in its `wandb sync` command
    nxt = (
        f"Next: python train.py {cli_override('resume', out_dir)} (goes on from {last.name})"
        if trainer.interrupted
        else f"Next: python eval.py {cli_override('ckpt_path', best_path)}"
    )
    value = "n/a" if best_score is None else f"{best_score:.4f}"
    at = "of the averaged weights" if averaged else f"at epoch {best_epoch}"
    key = cfg.monitor.split("/", 1)[-1]
    if cfg.data.get("tta") and cfg.monitor.startswith("val/") and (val_report or {}).get(key) is not None:
        note += (
            f" (validation during training scores without TTA; val_metrics.json scores the same checkpoint "
            f"with the recipe's TTA: {key} {(val_report or {})[key]:.4f})"
        )
    return f"{how}; best {cfg.monitor} = {value} {at}{note}\n{where}\n{nxt}"
