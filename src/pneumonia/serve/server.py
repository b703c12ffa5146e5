"""`serve(cfg)`: what `python serve.py ckpt_path=...` does.

The model is opened once here first (`api.open_model`), so a missing or damaged checkpoint,
an uncalibrated one or an export whose files do not belong together is one `error:` line
before any worker starts; its description becomes `/info`. Then LitServe starts
`serve.workers` worker processes, each loading the model in `PneumoniaAPI.setup`, behind
`guard.RequestGuard` (API key, body limit, multipart → JSON) on `serve.host:serve.port`
(127.0.0.1 by default). No client file is written and no telemetry is sent.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from omegaconf import DictConfig

from pneumonia.errors import ConfigError
from pneumonia.network import free_port, is_loopback
from pneumonia.serve.settings import ServeSettings, check_model_source

log = logging.getLogger(__name__)


def from_registry(cfg: DictConfig) -> DictConfig:
    """`model_uri=models:/<name>@<alias>` (or `/<version>`): the registered ONNX export
    downloaded into the run folder's `model/` (as predict.py does) and served as its
    `model_path=`; `cfg` as it is without a model_uri."""
    if not cfg.get("model_uri"):
        return cfg
    from pathlib import Path

    from omegaconf import open_dict

    from pneumonia.tracking.registry import download_export, parse_model_uri
    from pneumonia.tracking.settings import MlflowSettings

    parse_model_uri(cfg.model_uri)
    check_model_source(cfg)
    settings = MlflowSettings.from_config(cfg.get("mlflow"))
    model_path, _ = download_export(cfg.model_uri, settings, Path(cfg.paths.output_dir) / "model")
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.model_path, cfg.model_uri = str(model_path), None
    return cfg


def build(cfg: DictConfig) -> tuple[Any, ServeSettings]:
    """The `LitServer` for `cfg` (not started) and its checked settings."""
    import importlib.util

    settings = ServeSettings.from_config(cfg.serve)
    cfg = from_registry(cfg)
    backend = check_model_source(cfg)
    if importlib.util.find_spec("litserve") is None:
        raise ConfigError("serve.py needs litserve, which is not installed here: pip install -e '.[serve]'")
    import litserve as ls

    from pneumonia.serve.api import PneumoniaAPI, describe, open_model
    from pneumonia.serve.guard import RequestGuard

    scorer = open_model(cfg, settings.max_pixels)
    info = describe(scorer)
    del scorer
    gc.collect()
    device = str(cfg.get("device") or "cpu")
    accelerator = "cuda" if backend == "torch" and device.startswith("cuda") else "cpu"
    info["server"] = {
        "max_batch_size": settings.max_batch_size,
        "batch_timeout": settings.batch_timeout,
        "workers": settings.workers,
        "max_file_mb": settings.max_file_mb,
        "max_megapixels": settings.max_megapixels,
        "gradcam": settings.gradcam and backend == "torch",
    }
    server = ls.LitServer(
        PneumoniaAPI(cfg, settings),
        accelerator=accelerator,
        devices=1,
        workers_per_device=settings.workers,
        timeout=settings.timeout,
        model_metadata=info,
        middlewares=[(RequestGuard, {"settings": settings})],
    )
    return server, settings


def serve(cfg: DictConfig) -> None:
    server, settings = build(cfg)
    port = settings.port or free_port(settings.host)
    if not is_loopback(settings.host) and settings.api_key is None:
        log.warning(
            "serve.host=%s: the API is reachable from other machines without a key; set serve.api_key "
            "(or PNEUMONIA_SERVE_API_KEY), and put TLS in front of it",
            settings.host,
        )
    print(
        f"Serving on http://{settings.host}:{port}/predict (API docs: /docs, /info, /health); Ctrl-C stops it",
        flush=True,
    )
    server.run(
        host=settings.host,
        port=port,
        num_api_servers=1,
        log_level=settings.log_level,
        generate_client_file=False,
        api_server_worker_type="thread",
    )
