"""MLflow runs: the logger `logger=mlflow` builds (Lightning's `MLFlowLogger`), what train.py
adds to its run (the composed config as flat params, tags, artifacts), the parent run of a
cross-validation (`cv.folds=K`: each fold's run nests under it), how eval.py finds the run of
a checkpoint and logs the test results to it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pneumonia.evaluation.artefacts import train_summary_path, val_metrics_path
from pneumonia.tracking.run_info import config_params, read_run_file, run_tags, val_results, weights_digest
from pneumonia.tracking.settings import RUN_FILE, MlflowSettings

log = logging.getLogger(__name__)

TAG_DIGEST = "pneumonia.weights_digest"  # best.ckpt's weights checksum: finds the run of a copied checkpoint
TAG_SWEEP = "pneumonia.sweep_dir"
TAG_PARENT = "pneumonia.sweep_parent"
TAG_CV = "pneumonia.cv_dir"  # a cross-validation's parent run: its run folder
CV_FILES = ("cv_summary.json", "folds.csv", "oof_predictions.csv", "train_summary.json", "val_metrics.json")


def mlflow_logger(
    tracking_uri: str,
    experiment_name: str,
    artifact_location: str | None = None,
    run_name: str | None = None,
    run_folder: str | None = None,
    task_name: str | None = None,
) -> Any:
    """Lightning's `MLFlowLogger` on the configured store (a relative SQLite path made absolute,
    its folder made; new experiments keep artifacts in `mlartifacts/` beside it). Default run
    name: `<task_name>/<run folder name>`."""
    from lightning.pytorch.loggers import MLFlowLogger

    from pneumonia.tracking.settings import require_mlflow

    require_mlflow("logger=mlflow")
    settings = MlflowSettings(
        tracking_uri=tracking_uri,
        artifact_location=artifact_location,
        experiment_name=experiment_name,
        run_name=run_name,
    )
    if not run_name and run_folder:
        run_name = f"{task_name}/{Path(run_folder).name}" if task_name else Path(run_folder).name
    return MLFlowLogger(
        experiment_name=settings.experiment_name,
        run_name=run_name,
        tracking_uri=settings.tracking_uri,
        artifact_location=settings.artifact_location,
        run_id=_resumed_run(run_folder, settings.tracking_uri),
    )


def _resumed_run(run_folder: str | None, tracking_uri: str) -> str | None:
    """The MLflow run of a run folder that already has one in this store (a resumed run goes on
    logging into it)."""
    info = _read_run_file(run_folder)
    return info["run_id"] if info and info.get("tracking_uri") == tracking_uri else None


def mlflow_loggers(loggers: list[Any]) -> list[Any]:
    try:
        from lightning.pytorch.loggers import MLFlowLogger
    except ImportError:
        return []
    return [lg for lg in loggers if isinstance(lg, MLFlowLogger)]


def start_training_run(loggers: list[Any], cfg: Any, datamodule: Any, trainer: Any, out_dir: Path) -> None:
    """On each MLflow logger's run: the composed config as params, the tags (git commit and dirty
    flag, data root and fingerprint, hardware, precision, seed, sweep), the parent run of a
    sweep; `mlflow_run.json` in the run folder names the run (eval.py, export.py find it)."""
    runs = mlflow_loggers(loggers)
    if not runs or not trainer.is_global_zero:
        return
    params = config_params(cfg)
    tags = run_tags(cfg, datamodule, trainer, out_dir)
    sweep = _sweep_dir()
    from pneumonia.tracking.settings import make_store_folder

    for lg in runs:
        make_store_folder(lg._tracking_uri)
        client, run_id = lg.experiment, lg.run_id
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        _log_params(client, run_id, params)
        if sweep:
            client.set_tag(run_id, TAG_SWEEP, sweep)
        # a fold of a cross-validation nests under the cross-validation's run, a sweep's job under the sweep's
        parent = _cv_parent(out_dir, lg._tracking_uri) or (
            _sweep_parent(client, lg.experiment_id, sweep) if sweep else None
        )
        if parent:
            client.set_tag(run_id, "mlflow.parentRunId", parent)
    first = runs[0]
    (out_dir / RUN_FILE).write_text(
        json.dumps(
            {"tracking_uri": first._tracking_uri, "run_id": first.run_id, "experiment_id": first.experiment_id},
            indent=2,
        )
        + "\n"
    )


def _log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    """Params of a resumed run: the ones it already holds stay (MLflow refuses a changed value)."""
    from mlflow.entities import Param

    held = client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in params.items() if k not in held]
    for start in range(0, len(new), 100):
        client.log_batch(run_id, params=new[start : start + 100])


def _sweep_dir() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return str(Path(hydra_cfg.sweep.dir).resolve())
    except (ValueError, AttributeError, ImportError):
        pass
    return None


def _sweep_parent(client: Any, experiment_id: str, sweep: str) -> str:
    """The sweep's parent run (created by its first job): each job's run nests under it."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{_quote(sweep)}'", max_results=1)
    if found:
        return found[0].info.run_id
    parent = client.create_run(
        experiment_id, run_name=f"sweep/{Path(sweep).name}", tags={TAG_PARENT: sweep, TAG_SWEEP: sweep}
    )
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id


def _read_run_file(folder: str | Path | None) -> dict[str, Any] | None:
    return read_run_file(folder, RUN_FILE)


def _cv_parent(out_dir: Path, tracking_uri: str) -> str | None:
    """The parent run of a cross-validation's fold (`<run>/fold_<k>`): the run that
    `<run>/mlflow_run.json` names, in the same store."""
    info = _read_run_file(out_dir.parent)
    if info and info.get("cv") and info.get("tracking_uri") == tracking_uri:
        return str(info["run_id"])
    return None


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def finish_training_run(
    loggers: list[Any],
    out_dir: Path,
    best_path: str,
    val_report: dict[str, Any],
    metric_names: tuple[str, ...],
    log_checkpoint: bool = True,
    digest: str | None = None,
) -> None:
    """The validation results at the chosen threshold (`hp/val_*`, as in TensorBoard), the
    weights checksum tag, and the artifacts: best.ckpt, val_metrics.json, train_summary.json,
    the config (.hydra/), the TensorBoard folder (its figures) and any PNG of the run folder.
    `digest`: best.ckpt's weights checksum as calibration wrote it (read from the file when None)."""
    runs = mlflow_loggers(loggers)
    if not runs:
        return
    metrics = val_results(val_report, metric_names)
    digest = digest or weights_digest(best_path)
    for lg in runs:
        client, run_id = lg.experiment, lg.run_id
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        if val_report.get("method"):
            client.set_tag(run_id, "threshold.method", str(val_report["method"]))
        if digest:
            client.set_tag(run_id, TAG_DIGEST, digest)
        if best_path and log_checkpoint:
            client.log_artifact(run_id, best_path, "checkpoints")
        for file in (val_metrics_path(out_dir), train_summary_path(out_dir)):
            if file.is_file():
                client.log_artifact(run_id, str(file))
        for png in sorted(out_dir.glob("*.png")):
            client.log_artifact(run_id, str(png), "figures")
        for folder in (".hydra", "tensorboard"):
            if (out_dir / folder).is_dir():
                client.log_artifacts(run_id, str(out_dir / folder), folder.lstrip("."))


# ---- the parent run of a cross-validation -------------------------------------------------
def _mlflow_logger_node(cfg: Any) -> dict[str, Any] | None:
    """The `logger.*` node that builds an MLflow logger (`logger=mlflow`, `mlflow_tensorboard`)."""
    from pneumonia.config.plain import to_dict

    nodes = to_dict(cfg.logger, resolve=True) if cfg.get("logger") else {}
    for node in (nodes or {}).values():
        if isinstance(node, dict) and str(node.get("_target_", "")).endswith("mlflow_run.mlflow_logger"):
            return node
    return None


def start_cv_run(cfg: Any, run_dir: Path) -> str | None:
    """With an MLflow logger, the parent run of the cross-validation in `run_dir`: the composed
    config as params, the tags `pneumonia.cv_dir`, `cv.folds`, `git.*`; nested under a sweep's
    parent run in a sweep. `<run>/mlflow_run.json` names it (marked `"cv": true`): each fold's
    run (`<run>/fold_<k>`) nests under it, eval.py of the folds' ensemble logs to it, and a
    resumed cross-validation goes on in it. Returns its id (None without MLflow)."""
    import os

    node = _mlflow_logger_node(cfg)
    if node is None or os.environ.get("LOCAL_RANK", "0") != "0":  # DDP ranks 1..: rank 0 keeps the run
        return None
    from pneumonia.evaluation.report import git_state
    from pneumonia.tracking.settings import make_store_folder, require_mlflow

    require_mlflow("logger=mlflow")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    settings = MlflowSettings(
        tracking_uri=node["tracking_uri"],
        artifact_location=node.get("artifact_location"),
        experiment_name=node["experiment_name"],
        run_name=node.get("run_name"),
    )
    make_store_folder(settings.tracking_uri)
    client = MlflowClient(settings.tracking_uri)
    before = _read_run_file(run_dir)
    if before and before.get("cv") and before.get("tracking_uri") == settings.tracking_uri:
        try:
            client.update_run(before["run_id"], status="RUNNING")  # a resumed cross-validation
            _log_params(client, before["run_id"], config_params(cfg))
            return str(before["run_id"])
        except MlflowException as err:
            log.warning("%s names an MLflow run that cannot be read (%s): a new one", run_dir / RUN_FILE, err)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(settings.experiment_name, artifact_location=settings.artifact_location)
    )
    task = cfg.get("task_name")
    git = git_state()
    tags = {
        TAG_CV: str(run_dir.resolve()),
        "cv.folds": str(cfg.cv.folds),
        "run_folder": str(run_dir),
        "monitor": str(cfg.monitor),
        "seed": str(cfg.seed),
        "git.commit": str(git["commit"]),
        "git.dirty": str(git["dirty"]),
    }
    sweep = _sweep_dir()
    if sweep:
        tags[TAG_SWEEP] = sweep
        tags["mlflow.parentRunId"] = _sweep_parent(client, experiment_id, sweep)
    run = client.create_run(
        experiment_id, run_name=settings.run_name or (f"{task}/{run_dir.name}" if task else run_dir.name), tags=tags
    )
    run_id = run.info.run_id
    _log_params(client, run_id, config_params(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).write_text(
        json.dumps(
            {"tracking_uri": settings.tracking_uri, "run_id": run_id, "experiment_id": experiment_id, "cv": True},
            indent=2,
        )
        + "\n"
    )
    return run_id


def finish_cv_run(cfg: Any, run_dir: Path) -> str | None:
    """The cross-validation's results on its parent run, from the files the cross-validation
    wrote: `cv/best_score_mean|sd` (the folds' best `monitor`), `cv/<metric>_mean|sd` (their
    validation metrics at their thresholds), `cv/oof_auroc` (the pooled out-of-fold AUROC);
    cv_summary.json, folds.csv, oof_predictions.csv, train_summary.json as artifacts, and with
    `cv.ensemble=true` the ensemble's val_metrics.json, best.ckpt (`mlflow.log_checkpoint`) and
    its weights checksum tag. Folds trained alone (`data.fold=k` into `<run>/fold_<k>`) are
    nested under it too. The run is then finished. Returns its id (None without a parent run)."""
    info = _read_run_file(run_dir)
    if not info or not info.get("cv"):
        return None
    from mlflow import MlflowClient

    client, run_id = MlflowClient(info["tracking_uri"]), str(info["run_id"])
    summary = json.loads((run_dir / "cv_summary.json").read_text())
    metrics: dict[str, float] = {}
    for stat in ("mean", "sd"):
        value = (summary.get("best_score") or {}).get(stat)
        if isinstance(value, (int, float)):
            metrics[f"cv/best_score_{stat}"] = float(value)
        for key, value in (summary.get(stat) or {}).items():
            if isinstance(value, (int, float)):
                metrics[f"cv/{key}_{stat}"] = float(value)
    oof_auroc = (summary.get("out_of_fold") or {}).get("auroc")
    if isinstance(oof_auroc, (int, float)):
        metrics["cv/oof_auroc"] = float(oof_auroc)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for name in CV_FILES:
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    best = run_dir / "checkpoints" / "best.ckpt"  # cv.ensemble=true: the folds' ensemble
    if best.is_file():
        digest = weights_digest(str(best))
        if digest:
            client.set_tag(run_id, TAG_DIGEST, digest)
        if bool((cfg.get("mlflow") or {}).get("log_checkpoint", True)):
            client.log_artifact(run_id, str(best), "checkpoints")
    for fold in sorted(run_dir.glob("fold_*")):
        child = _read_run_file(fold)
        if child and child.get("tracking_uri") == info["tracking_uri"]:
            client.set_tag(str(child["run_id"]), "mlflow.parentRunId", run_id)
    client.set_terminated(run_id)
    log.info("MLflow run %s: the cross-validation, its folds nested under it", run_id)
    return run_id


def end_cv_run_early(run_dir: Path, *, interrupted: bool) -> None:
    """A cross-validation that stopped with an error (FAILED) or Ctrl-C (KILLED): its parent run
    says so instead of staying RUNNING; `resume=<run>` sets it running again. Never raises: the
    error that stopped the run is the one the user sees."""
    info = _read_run_file(run_dir)
    if not info or not info.get("cv"):
        return
    try:
        from mlflow import MlflowClient

        MlflowClient(info["tracking_uri"]).set_terminated(
            str(info["run_id"]), status="KILLED" if interrupted else "FAILED"
        )
    except Exception as err:  # noqa: BLE001 - the store may be the reason the run stopped
        log.warning("could not mark MLflow run %s as stopped: %s", info["run_id"], err)


# ---- finding the run of a checkpoint ------------------------------------------------------
def _store_exists(settings: MlflowSettings) -> bool:
    """A SQLite store that was never written holds no runs (and is not made by looking)."""
    uri = settings.tracking_uri
    return Path(uri[len("sqlite:///") :]).is_file() if uri.startswith("sqlite:///") else True


def may_be_tracked(ckpt_path: str | Path, settings: MlflowSettings) -> bool:
    """Whether a run of `ckpt_path` may exist (its run folder names one, or the store exists)
    and mlflow is installed: answered without importing mlflow's heavy parts."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        return False
    return (Path(ckpt_path).resolve().parent.parent / RUN_FILE).is_file() or _store_exists(settings)


def find_training_run(ckpt_path: str | Path, settings: MlflowSettings | None) -> tuple[Any, str] | None:
    """(MlflowClient, run id) of the run that trained `ckpt_path`: the `mlflow_run.json` of its
    run folder (`<run>/checkpoints/<file>`), else the run of `settings`' store whose weights
    checksum tag is the checkpoint's. None when there is none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    ckpt_path = Path(ckpt_path)
    run_file = ckpt_path.resolve().parent.parent / RUN_FILE
    if run_file.is_file():
        try:
            info = json.loads(run_file.read_text())
            client = MlflowClient(info["tracking_uri"], registry_uri=info["tracking_uri"])
            client.get_run(info["run_id"])
            return client, info["run_id"]
        except (OSError, ValueError, KeyError, MlflowException) as err:
            log.warning(
                "%s names an MLflow run that cannot be read (%s); looking it up by checksum",
                run_file,
                str(err).splitlines()[0] if str(err) else type(err).__name__,
            )
    if settings is None or not _store_exists(settings):
        return None
    from pneumonia.inference.checkpoint import load_checkpoint
    from pneumonia.integrity import stored_digest

    digest = stored_digest(load_checkpoint(ckpt_path))
    if not digest:
        return None
    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    found = client.search_runs(experiments, filter_string=f"tags.`{TAG_DIGEST}` = '{digest}'", max_results=1)
    return (client, found[0].info.run_id) if found else None


def log_evaluation(
    ckpt_path: str | Path, settings: MlflowSettings, out_dir: Path, rep: dict[str, Any], report_keys: tuple[str, ...]
) -> str | None:
    """eval.py's results on the training run of `ckpt_path`: the metrics as `test/<name>` (with
    the 95% interval bounds as `test/<name>_ci_low|high`), metrics.json, report.html,
    predictions.csv and the figures under `eval/<eval folder name>/`. Returns the run id."""
    found = find_training_run(ckpt_path, settings)
    if found is None:
        log.info("No MLflow run found for %s: the evaluation is not tracked", ckpt_path)
        return None
    client, run_id = found
    metrics = {f"test/{k}": float(rep[k]) for k in report_keys if isinstance(rep.get(k), (int, float))}
    for name, interval in (rep.get("ci95") or {}).items():
        if (
            isinstance(interval, (list, tuple))
            and len(interval) == 2
            and all(isinstance(x, (int, float)) for x in interval)
        ):
            metrics[f"test/{name}_ci_low"], metrics[f"test/{name}_ci_high"] = map(float, interval)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    where = f"eval/{out_dir.name}"
    for name in ("metrics.json", "report.html", "predictions.csv", "dataset.json"):
        if (out_dir / name).is_file():
            client.log_artifact(run_id, str(out_dir / name), where)
    for png in sorted(out_dir.glob("*.png")):
        client.log_artifact(run_id, str(png), f"{where}/figures")
    client.set_tag(run_id, "eval.last_folder", str(out_dir))
    return run_id
