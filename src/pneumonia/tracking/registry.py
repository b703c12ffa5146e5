"""MLflow's model registry: an export.py folder (the model file, model.json, MODEL_CARD.md)
registered as a new version of a named model, with its threshold, method and validation
metrics as tags and a link to the training run; versions listed, aliases set; a
`models:/<name>@<alias>` (or `/<version>`) URI downloaded for predict.py and serve.py (the
ONNX export) or app.py (the training run's checkpoint, for Grad-CAM)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from pneumonia.errors import UserError
from pneumonia.tracking.settings import MlflowSettings, require_mlflow

log = logging.getLogger(__name__)

EXPORT_FILES = ("model.json", "MODEL_CARD.md")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[0-9]+))$")


class RegistryError(UserError):
    """A registry step that cannot be done: a bad name, a missing model or version."""


def check_name(name: object, key: str = "register") -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise RegistryError(
            f"{key}={name!r} must be a model name: letters, digits, '_', '-', '.' (e.g. {key}=pneumonia)"
        )
    return name


def check_alias(alias: object, key: str = "alias") -> str:
    if not isinstance(alias, str) or not ALIAS.match(alias) or re.fullmatch(r"[vV][0-9]+|latest", alias):
        raise RegistryError(
            f"{key}={alias!r} must be an alias such as champion: letters, digits, '_', '-', "
            f"not a version (v1) nor 'latest'"
        )
    return alias


def parse_model_uri(uri: object) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of `models:/<name>@<alias>` or `models:/<name>/<version>`."""
    match = MODEL_URI.match(uri) if isinstance(uri, str) else None
    if not match:
        raise RegistryError(
            f"model_uri={uri!r} must be models:/<name>@<alias> or models:/<name>/<version> "
            f"(e.g. models:/pneumonia@champion)"
        )
    return match["name"], match["alias"], match["version"]


def client(settings: MlflowSettings) -> Any:
    require_mlflow("the model registry")
    from mlflow import MlflowClient

    return MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)


def _version_tags(meta: dict[str, Any], run_id: str | None, ckpt_path: str) -> dict[str, str]:
    """What a team asks of a version without opening it: threshold and method, the validation
    metrics with their 95% intervals, format and checksum, the checkpoint (and its weights
    checksum: app.py model_uri= finds it in the training run by it) and training run."""
    from pneumonia.tracking.run_info import weights_digest

    digest = weights_digest(str(ckpt_path))
    tags = {
        "format": str(meta.get("format")),
        "model_file": str(meta.get("model_file")),
        "sha256": str(meta.get("sha256")),
        "threshold": f"{float(meta['threshold']):.6g}",
        "threshold_method": str(meta.get("threshold_method")),
        "temperature": f"{meta.get('temperature', 1.0):g}",
        "tta": str(bool((meta.get("tta") or {}).get("enabled"))),
        "checkpoint": str(ckpt_path),
        "git_commit": str((meta.get("provenance") or {}).get("git_commit")),
        "git_dirty": str((meta.get("provenance") or {}).get("git_dirty")),
    }
    if digest:
        tags["weights_digest"] = digest
    validation = meta.get("validation") or {}
    intervals = validation.get("ci95") or {}
    for key, value in validation.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            tags[f"val.{key}"] = f"{value:.6g}"
            ci = intervals.get(key)
            if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
                tags[f"val.{key}.ci95"] = f"[{ci[0]:.4g}, {ci[1]:.4g}]"
    if run_id:
        tags["training_run_id"] = run_id
    return tags


def register_export(
    export_dir: str | Path, name: str, ckpt_path: str | Path, settings: MlflowSettings, alias: str | None = None
) -> dict[str, Any]:
    """Register `export_dir` (export.py's folder) as a new version of model `name`. Its files go
    to the checkpoint's training run (artifacts `export/<folder name>/`) when the store holds
    it, else to a run of its own (`export/<folder name>`) in `settings.experiment_name`; the
    version's source is that artifact folder and its run the training run. Returns
    {name, version, run_id, source, uri}."""
    from pneumonia.tracking.mlflow_run import find_training_run

    check_name(name)
    if alias is not None:
        check_alias(alias)
    export_dir = Path(export_dir)
    meta = json.loads((export_dir / "model.json").read_text())
    files = [export_dir / str(meta["model_file"]), *(export_dir / f for f in EXPORT_FILES)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise RegistryError(f"{export_dir}: {', '.join(missing)} missing, nothing registered")
    from pneumonia.tracking.settings import make_store_folder

    make_store_folder(settings.tracking_uri)
    mlflow_client = client(settings)
    found = find_training_run(ckpt_path, settings)
    training_run = None
    if found is not None:
        # the run folder's store may differ from settings': the version's run must be in this store
        try:
            mlflow_client.get_run(found[1])
            training_run = found[1]
        except Exception:  # noqa: BLE001 - another store: register with a run of our own
            training_run = None
    artifact_path = f"export/{export_dir.name}"
    if training_run is None:
        experiment = mlflow_client.get_experiment_by_name(settings.experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else mlflow_client.create_experiment(settings.experiment_name, artifact_location=settings.artifact_location)
        )
        run = mlflow_client.create_run(
            experiment_id, run_name=artifact_path, tags={"checkpoint": str(ckpt_path), "task_name": "export"}
        )
        run_id = run.info.run_id
        log.warning(
            "No MLflow training run found for %s: the export is logged to a run of its own (%s)", ckpt_path, run_id
        )
    else:
        run_id = training_run
    for f in files:
        mlflow_client.log_artifact(run_id, str(f), artifact_path)
    if training_run is None:
        mlflow_client.set_terminated(run_id)
    _ensure_model(mlflow_client, name)
    source = f"{mlflow_client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    card = (export_dir / "MODEL_CARD.md").read_text()
    version = mlflow_client.create_model_version(
        name,
        source=source,
        run_id=run_id,
        tags=_version_tags(meta, training_run, str(ckpt_path)),
        description=card[:4000],
    )
    if alias:
        mlflow_client.set_registered_model_alias(name, alias, version.version)
    return {
        "name": name,
        "version": int(version.version),
        "run_id": run_id,
        "training_run_id": training_run,
        "source": source,
        "uri": f"models:/{name}/{version.version}",
        "alias": alias,
    }


def _ensure_model(mlflow_client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        mlflow_client.create_registered_model(
            name,
            description="Pneumonia classifier exported by export.py (ONNX or torch.export) with model.json "
            "and MODEL_CARD.md",
        )


def _model_version(mlflow_client: Any, name: str, alias: str | None, version: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in mlflow_client.search_registered_models())
        raise RegistryError(
            f"no registered model '{name}' in the store"
            + (f" (registered: {', '.join(known)})" if known else " (none registered)")
        ) from None
    try:
        if alias:
            return mlflow_client.get_model_version_by_alias(name, alias)
        return mlflow_client.get_model_version(name, version)
    except MlflowException:
        what = f"alias '{alias}'" if alias else f"version {version}"
        have = ", ".join(f"{v.version}" for v in versions(mlflow_client, name))
        hint = f"; set it with: python -m pneumonia.tools.registry alias {name} <version> {alias}" if alias else ""
        raise RegistryError(f"model '{name}' has no {what} (versions: {have or 'none'}){hint}") from None


def versions(mlflow_client: Any, name: str) -> list[Any]:
    found = mlflow_client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda v: int(v.version))


def resolve(model_uri: str, settings: MlflowSettings) -> Any:
    """The model version `model_uri` names (one-line errors for an unknown name, alias or version)."""
    name, alias, version = parse_model_uri(model_uri)
    return _model_version(client(settings), name, alias, version)


def download(model_uri: str, settings: MlflowSettings, dst: str | Path) -> tuple[Path, Any]:
    """The files of the version `model_uri` names, into `dst`; (folder, model version)."""
    version = resolve(model_uri, settings)
    import mlflow.artifacts

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=version.source, dst_path=str(dst), tracking_uri=settings.tracking_uri
    )
    return Path(local), version


def download_export(model_uri: str, settings: MlflowSettings, dst: str | Path) -> tuple[Path, Any]:
    """(model file, model version): the ONNX export `model_uri` names, downloaded into `dst`
    (predict.py and serve.py score it with backend=onnx). A version that is not an ONNX export
    is refused in one line."""
    require_mlflow(f"model_uri={model_uri}")
    folder, version = download(model_uri, settings, dst)
    sidecar = folder / "model.json"
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    if meta.get("format") != "onnx":
        raise RegistryError(
            f"model_uri={model_uri} (version {version.version}) is a "
            f"{meta.get('format') or 'non-export'} model: only registered ONNX exports are scored "
            f"(export.py format=onnx register=...)"
        )
    log.info("model_uri=%s: version %s (%s), downloaded to %s", model_uri, version.version, version.source, folder)
    return folder / str(meta["model_file"]), version


CHECKPOINT_ARTIFACT = "checkpoints/best.ckpt"  # where train.py logs best.ckpt in its run (mlflow.log_checkpoint)


def download_checkpoint(model_uri: str, settings: MlflowSettings, dst: str | Path) -> tuple[Path, Any]:
    """(checkpoint, model version): the checkpoint the version `model_uri` names was exported
    from, downloaded into `dst` from its training run (`checkpoints/best.ckpt`, logged by
    train.py with mlflow.log_checkpoint=true) and checked against the version's
    `weights_digest` tag. For app.py, whose Grad-CAM needs the torch network; one-line errors
    when the run holds no such checkpoint or another one."""
    require_mlflow(f"model_uri={model_uri}")
    from mlflow.exceptions import MlflowException

    from pneumonia.tracking.run_info import weights_digest

    version = resolve(model_uri, settings)
    tags = dict(version.tags or {})
    what = f"model_uri={model_uri} (version {version.version})"
    run_id = tags.get("training_run_id")
    if not run_id:
        raise RegistryError(
            f"{what} has no training run in the store, so no checkpoint to score: give "
            f"ckpt_path={tags.get('checkpoint') or '<best.ckpt>'}"
        )
    if not tags.get("weights_digest"):
        raise RegistryError(
            f"{what} was registered without its checkpoint's weights checksum (an older export.py): "
            f"register it again, or give ckpt_path={tags.get('checkpoint') or '<best.ckpt>'}"
        )
    import mlflow.artifacts

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=str(dst), tracking_uri=settings.tracking_uri
            )
        )
    except (MlflowException, OSError) as err:
        raise RegistryError(
            f"{what}: its training run {run_id} holds no {CHECKPOINT_ARTIFACT} (trained with "
            f"mlflow.log_checkpoint=false?) ({str(err).splitlines()[0] if str(err) else type(err).__name__}): "
            f"give ckpt_path={tags.get('checkpoint') or '<best.ckpt>'}"
        ) from None
    if weights_digest(str(local)) != tags["weights_digest"]:
        raise RegistryError(
            f"{what} was exported from {tags.get('checkpoint')}, not from the best.ckpt its training run "
            f"{run_id} holds: give ckpt_path={tags.get('checkpoint') or '<that checkpoint>'}"
        )
    log.info(
        "model_uri=%s: version %s, the checkpoint of training run %s, downloaded to %s",
        model_uri,
        version.version,
        run_id,
        local,
    )
    return local, version
