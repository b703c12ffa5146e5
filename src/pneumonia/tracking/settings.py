"""The `mlflow:` config node (conf/mlflow/default.yaml): its types declared once, in the
signature (checked on the command line before torch is imported, `runners.quick`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from annotated_types import MinLen

from pneumonia.errors import ConfigError, UserError
from pneumonia.signature import check_arguments

INSTALL_TRACKING = "pip install 'pneumonia[tracking]'"
RUN_FILE = "mlflow_run.json"  # in a training run's folder: the MLflow run that holds it


class MlflowSettings:
    """Where runs and registered models go and what a run holds."""

    def __init__(
        self,
        tracking_uri: Annotated[str, MinLen(1)] = "sqlite:///outputs/mlflow.db",
        artifact_location: str | None = None,
        experiment_name: Annotated[str, MinLen(1)] = "pneumonia",
        run_name: str | None = None,
        log_checkpoint: bool = True,
        eval_to_training_run: bool = True,
    ) -> None:
        check_arguments(type(self), locals())
        self.tracking_uri = store_uri(tracking_uri)
        self.artifact_location = artifact_uri(self.tracking_uri, artifact_location)
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.log_checkpoint = log_checkpoint
        self.eval_to_training_run = eval_to_training_run

    @classmethod
    def from_config(cls, node: Any) -> MlflowSettings:
        from omegaconf import OmegaConf

        from pneumonia.config.plain import to_dict

        values = to_dict(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"mlflow.{err}") from None
        except TypeError as err:
            raise ConfigError(f"mlflow: {err}") from None


def store_uri(uri: str) -> str:
    """`sqlite:///relative/path.db` made absolute (from the current folder), its folder made;
    other URIs (http://, an absolute sqlite path, file:) as given."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///") :]).expanduser().resolve()
        uri = f"sqlite:///{path}"
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if path.is_dir():
            raise ConfigError(f"tracking_uri={uri}: '{path}' is a folder, not a database file")
    elif "://" not in uri:
        raise ConfigError(f"tracking_uri={uri!r} must be a URI: sqlite:///path/mlflow.db or http://host:5000")
    return uri


def make_store_folder(uri: str) -> None:
    """The folder of a SQLite store, made before its first write (not when only read)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"mlflow.tracking_uri={uri}: cannot make its folder ({err.strerror or err})") from None


def artifact_uri(tracking_uri: str, location: str | None) -> str | None:
    """New experiments' artifact folder: `location`, else `mlartifacts/` beside a SQLite store
    (a server keeps its own default)."""
    if location:
        return location if "://" in location else Path(location).expanduser().resolve().as_uri()
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return None


def require_mlflow(what: str) -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UserError(f"{what} needs the Python package 'mlflow': {INSTALL_TRACKING}") from None
