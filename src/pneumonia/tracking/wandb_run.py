"""Weights & Biases runs: the logger `logger=wandb` builds (Lightning's `WandbLogger`, offline
by default: everything stays in the run folder's `wandb/` until `wandb sync`), and what
train.py adds to its run, the same as to an MLflow run (`tracking.run_info`): the composed
config as flat params, the tags, the validation results at the chosen threshold, best.ckpt,
val_metrics.json and train_summary.json as a model artifact. A resumed run (`resume=<run
folder>`) goes on in the W&B run its folder's `wandb_run.json` names: each attempt writes a
folder of its own, all listed there and in the closing line's `wandb sync` command."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

from annotated_types import MinLen

from pneumonia.evaluation.artefacts import train_summary_path, val_metrics_path
from pneumonia.errors import ConfigError
from pneumonia.tracking.run_info import config_params, read_run_file, run_tags, val_results, weights_digest
from pneumonia.tracking.settings import INSTALL_TRACKING

log = logging.getLogger(__name__)

RUN_FILE = "wandb_run.json"  # in a training run's folder: its W&B run (id, project, each attempt's folder)
MAX_TAG = 64  # characters of a W&B tag (W&B refuses longer ones)
# the run tags shown as W&B tags (`key=value`, short); every tag is also in the config as `tags.<key>`
LABELS = ("git.commit", "git.dirty", "seed", "task_name", "monitor", "accelerator", "precision", "data.fingerprint")


def require_wandb(what: str) -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError(f"{what} needs the Python package 'wandb': {INSTALL_TRACKING}") from None


def wandb_logger(
    project: Annotated[str, MinLen(1)] = "pneumonia",
    save_dir: str = ".",
    offline: bool = True,
    entity: str | None = None,
    run_name: str | None = None,
    run_folder: str | None = None,
    task_name: str | None = None,
    log_checkpoint: bool = True,
) -> Any:
    """Lightning's `WandbLogger`, offline unless `offline=false` (then it needs `wandb login`):
    its files go to `<save_dir>/wandb/offline-run-<time>-<id>/`, uploaded later by `wandb
    sync`. No console capture, no code saving, no login prompt; W&B's own lines are silenced.
    Default run name: `<task_name>/<run folder name>`. `log_checkpoint`: best.ckpt (after
    calibration) in the run's model artifact (Lightning's own `log_model` stays off: it would
    log the checkpoint before the threshold is chosen). A run folder that already has a W&B
    run of this project (`wandb_run.json`: a resumed run) goes on in it (`id=`, `resume="allow"`)."""
    require_wandb("logger=wandb")
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    if offline:
        os.environ["WANDB_MODE"] = "offline"  # no network, no login: WandbLogger sets it too, when the run starts
    if wandb.run is not None:  # a run left open in this process (an earlier job that failed): not this run's
        wandb.finish()
    if not run_name and run_folder:
        run_name = f"{task_name}/{Path(run_folder).name}" if task_name else Path(run_folder).name
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    resumed = previous_run(run_folder, project)
    logger = WandbLogger(
        name=run_name,
        save_dir=save_dir,
        offline=offline,
        project=project,
        entity=entity,
        log_model=False,
        settings=wandb.Settings(silent=True, console="off", save_code=False, disable_job_creation=True),
        **({"id": resumed["run_id"], "resume": "allow"} if resumed else {}),
    )
    # Lightning passes `anonymous=None`, which wandb 0.2x+ warns about at every run ("has no effect")
    logger._wandb_init.pop("anonymous", None)
    logger.pneumonia_log_checkpoint = bool(log_checkpoint)  # type: ignore[attr-defined]  # read by finish_wandb_run
    return logger


def previous_run(run_folder: str | Path | None, project: str) -> dict[str, Any] | None:
    """The W&B run a run folder already holds (its `wandb_run.json`), when it is of `project`:
    a resumed run goes on in it. `folders`: each attempt's local folder, the first first."""
    info = read_run_file(run_folder, RUN_FILE)
    if info is None or info.get("project") != project:
        return None
    info["folders"] = [str(f) for f in info.get("folders") or ([info["folder"]] if info.get("folder") else [])]
    return info


def wandb_loggers(loggers: list[Any]) -> list[Any]:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:
        return []
    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def labels(tags: dict[str, str]) -> list[str]:
    """The short run tags as W&B tags: `key=value`, at most 64 characters."""
    return [f"{k}={tags[k]}"[:MAX_TAG] for k in LABELS if k in tags]


def start_wandb_run(loggers: list[Any], cfg: Any, datamodule: Any, trainer: Any, out_dir: Path) -> None:
    """On each W&B logger's run: the composed config as flat params (`optimizer.lr`, `seed`,
    ...), the tags under `tags.<key>` in the config and the short ones as W&B tags
    (`git.commit=<sha>`, ...); `wandb_run.json` in the run folder names the run and its local
    folders (a resumed run's: every attempt's, the first first)."""
    runs = wandb_loggers(loggers)
    if not runs or not trainer.is_global_zero:
        return
    params = config_params(cfg, typed=True)
    tags = run_tags(cfg, datamodule, trainer, out_dir)
    for lg in runs:
        run = lg.experiment
        run.config.update(params, allow_val_change=True)
        run.config.update({f"tags.{k}": v for k, v in tags.items()}, allow_val_change=True)
        run.tags = tuple(dict.fromkeys([*(run.tags or ()), *labels(tags)]))
    run = runs[0].experiment
    folder = str(Path(run.dir).parent)  # <save_dir>/wandb/offline-run-<time>-<id> (files/ below it)
    before = previous_run(out_dir, run.project)
    folders = before["folders"] if before and before["run_id"] == run.id else []
    (out_dir / RUN_FILE).write_text(
        json.dumps(
            {
                "run_id": run.id,
                "project": run.project,
                "offline": bool(run.offline),
                "folder": folder,  # this attempt's
                "folders": [*(f for f in folders if f != folder), folder],
            },
            indent=2,
        )
        + "\n"
    )


def wandb_note(out_dir: Path) -> str:
    """`; W&B run <id>` for a run's closing lines, offline with the command that uploads every
    attempt's offline folder in order (`wandb sync <first> <second> ...`: one W&B run); '' for
    a run without W&B."""
    import shlex

    run_file = out_dir / RUN_FILE
    if not run_file.is_file():
        return ""
    info = json.loads(run_file.read_text())
    note = f"; W&B run {info['run_id']}"
    if not info.get("offline"):
        return note
    folders = [f for f in info.get("folders") or [info["folder"]] if Path(f).name.startswith("offline-run-")]
    return note + f" offline (upload: wandb sync {' '.join(shlex.quote(f) for f in folders)})"


def finish_wandb_run(
    loggers: list[Any],
    out_dir: Path,
    best_path: str,
    val_report: dict[str, Any],
    metric_names: tuple[str, ...],
    digest: str | None = None,
) -> None:
    """The validation results at the chosen threshold (`hp/val_*`) and the weights checksum in
    the run's summary; best.ckpt, val_metrics.json and train_summary.json as the run's model
    artifact `model-<run id>` (alias `best`); then the run is finished (its files written).
    `digest`: best.ckpt's weights checksum as calibration wrote it (read from the file when None)."""
    runs = wandb_loggers(loggers)
    if not runs:
        return
    import wandb

    summary: dict[str, Any] = dict(val_results(val_report, metric_names))
    if val_report.get("method"):
        summary["threshold.method"] = str(val_report["method"])
    digest = digest or weights_digest(best_path)
    if digest:
        summary["pneumonia.weights_digest"] = digest
    for lg in runs:
        run = lg.experiment
        run.summary.update(summary)
        files = [(path, path.name) for path in (val_metrics_path(out_dir), train_summary_path(out_dir))]
        if best_path and getattr(lg, "pneumonia_log_checkpoint", True):
            files.insert(0, (Path(best_path), "checkpoints/best.ckpt"))
        files = [(path, name) for path, name in files if path.is_file()]
        if files:
            artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=summary)
            for path, name in files:
                artifact.add_file(str(path), name=name)
            run.log_artifact(artifact, aliases=["best"])
        run.finish()
