"""`serve(cfg)`: what `python app.py ckpt_path=...` does.

Safe by default: the page binds to 127.0.0.1 (`app.host`), never makes a share link, sends
no telemetry (Gradio's analytics and version check off, Hugging Face Hub offline), serves no
API documentation or MCP server, and keeps uploads in a private folder (mode 0700, made
by `tempfile.mkdtemp`) where a janitor removes each upload after `app.upload_ttl_s`, scored
or not, and keeps the folder under `app.upload_dir_max_mb`; the folder is removed when the
server stops (Ctrl-C or SIGTERM). `app.auth=user:password` (or the environment variable
PNEUMONIA_APP_AUTH) asks for a password, with at most `app.login_max_failures` failed logins
per minute per client address before `app.login_lockout_s` of refusals; over a network,
also give `app.ssl_certfile` and `app.ssl_keyfile`, or the password and the images travel
unencrypted.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pneumonia.validators import optional_int
from pneumonia.app.guards import LoginGuard, LoginLimiter, UploadJanitor, duration
from pneumonia.app.service import MB, Limits, Service
from pneumonia.errors import ConfigError
from pneumonia.network import free_port, is_loopback

log = logging.getLogger(__name__)

TEMP_PREFIX = "pneumonia-app-"
LOGIN_WINDOW_S = 60.0  # app.login_max_failures counts failed logins over this window


def _positive(app: Any, key: str, *, integer: bool = False) -> float:
    value = app.get(key)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < float("inf"):
        raise ConfigError(f"app.{key}={value!r} must be a positive {'integer' if integer else 'number'}")
    return value


def parse_auth(auth: Any) -> tuple[str, str] | None:
    """`user:password` → (user, password); None/"" → no password."""
    if auth is None or auth == "":
        return None
    if not isinstance(auth, str) or ":" not in auth:
        raise ConfigError("app.auth must be user:password (or unset for no password)")
    user, password = auth.split(":", 1)
    if not user or not password:
        raise ConfigError("app.auth must be user:password with both parts non-empty")
    return user, password


def check(cfg: DictConfig) -> dict[str, Any]:
    """The launch settings from `cfg.app`, each checked; a `ConfigError` naming the key."""
    app = cfg.app
    host = app.host
    if not isinstance(host, str) or not host:
        raise ConfigError(f"app.host={host!r} must be a host name or address, e.g. 127.0.0.1 or 0.0.0.0")
    port = app.port
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"app.port={port!r} must be an integer in 0..65535 (0: any free port)")
    keep = app.keep_minutes
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or keep <= 0:
        raise ConfigError(f"app.keep_minutes={keep!r} must be a positive number")
    ssl = {"ssl_certfile": app.get("ssl_certfile"), "ssl_keyfile": app.get("ssl_keyfile")}
    if bool(ssl["ssl_certfile"]) != bool(ssl["ssl_keyfile"]):
        raise ConfigError("app.ssl_certfile and app.ssl_keyfile go together: give both or neither")
    for key, value in ssl.items():
        if value and not Path(value).is_file():
            raise ConfigError(f"app.{key}={value!r} is not a file")
    limits = Limits(app.max_files, app.max_file_mb, app.max_megapixels)
    guards = {
        key: _positive(app, key, integer=key == "login_max_failures")
        for key in ("upload_ttl_s", "upload_dir_max_mb", "login_max_failures", "login_lockout_s")
    }
    if guards["upload_dir_max_mb"] < limits.max_files * limits.max_file_mb:
        raise ConfigError(
            f"app.upload_dir_max_mb={guards['upload_dir_max_mb']!r} must hold one full upload: at least "
            f"app.max_files x app.max_file_mb = {limits.max_files * limits.max_file_mb:g}"
        )
    return {
        "host": host,
        "port": port,
        "auth": parse_auth(app.auth),
        "keep_minutes": float(keep),
        "limits": limits,
        **guards,
        "open_browser": bool(app.get("open_browser", False)),
        **{k: v or None for k, v in ssl.items()},
    }


def prepare_environment(work_dir: str | Path) -> None:
    """Before gradio is imported: no telemetry, no Hub calls, uploads into `work_dir`."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["GRADIO_TEMP_DIR"] = str(work_dir)


def _stop_on_sigterm() -> None:
    """SIGTERM stops the server as Ctrl-C does, so the private folder is removed."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a test's thread): leave it
        pass


def cap_malloc_arenas(arenas: int = 2) -> bool:
    """glibc gives every thread that allocates a malloc arena of its own; Gradio runs each
    event in a pool of up to 40 threads, and the server's memory crept from 0.70 to 1.15 GB
    over 12 uploads of 20 images (measured), against a flat 0.89 GB with 2 arenas (the same
    as MALLOC_ARENA_MAX=2). No effect, and False, where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, int(arenas)))  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def checkpoint_path(cfg: DictConfig) -> str:
    """`ckpt_path=`, or for `model_uri=models:/<name>@<alias>` (or `/<version>`) the checkpoint
    that registered version was exported from: its training run's best.ckpt, downloaded into
    the run folder's `model/` and checked against the version's weights checksum (the page's
    Grad-CAM needs the torch network, not the ONNX export)."""
    from omegaconf import OmegaConf

    uri = cfg.get("model_uri")
    given = not OmegaConf.is_missing(cfg, "ckpt_path") and cfg.get("ckpt_path")
    if uri and given:
        raise ConfigError("app.py scores one model: give ckpt_path= or model_uri=, not both")
    if not uri:
        return str(cfg.ckpt_path)
    from pneumonia.tracking.registry import download_checkpoint, parse_model_uri
    from pneumonia.tracking.settings import MlflowSettings

    parse_model_uri(uri)
    settings = MlflowSettings.from_config(cfg.get("mlflow"))
    path, _ = download_checkpoint(uri, settings, Path(cfg.paths.output_dir) / "model")
    return str(path)


def serve(cfg: DictConfig) -> None:
    settings = check(cfg)
    cap_malloc_arenas()
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError("the page needs gradio, which is not installed here: pip install -e '.[app]'")
    if optional_int(cfg.get("threads"), "threads", 1):
        import torch

        torch.set_num_threads(cfg.threads)
    ckpt_path = checkpoint_path(cfg)
    service = Service.from_checkpoint(
        ckpt_path,
        settings["limits"],
        device=cfg.device,
        precision=cfg.precision,
        batch_size=int(cfg.batch_size),
        threshold=cfg.get("threshold"),
    )
    service.warm_up()
    host, auth = settings["host"], settings["auth"]
    if not is_loopback(host):
        if auth is None:
            log.warning(
                "app.host=%s: the page is reachable from other machines, without a password: set "
                "app.auth=user:password (or PNEUMONIA_APP_AUTH)",
                host,
            )
        if not settings["ssl_certfile"]:
            log.warning(
                "app.host=%s without app.ssl_certfile/app.ssl_keyfile: images%s cross the network unencrypted",
                host,
                " and the password" if auth else "",
            )
    port = settings["port"] or free_port(host)

    work_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))  # 0700: this user only
    prepare_environment(work_dir)
    _stop_on_sigterm()
    janitor = None
    try:
        from starlette.middleware import Middleware

        from pneumonia.app.page import build_page

        page = build_page(
            service, work_dir, keep_minutes=settings["keep_minutes"], upload_ttl_s=settings["upload_ttl_s"]
        )
        page.queue(default_concurrency_limit=1)  # one scoring at a time: the model uses every core
        janitor = UploadJanitor(
            work_dir,
            settings["upload_ttl_s"],
            int(settings["upload_dir_max_mb"] * MB),
            lambda: page.upload_file_set,
            interval_s=min(5.0, settings["upload_ttl_s"]),
        ).start()
        limiter = LoginLimiter(settings["login_max_failures"], LOGIN_WINDOW_S, settings["login_lockout_s"])
        middleware = [Middleware(LoginGuard, limiter=limiter)] if auth else []
        lockout = (
            f"After {limiter.max_failures} failed logins within a minute, logins from your address are "
            f"refused for {duration(limiter.lockout_s)}, the right password too."
        )  # the login page's note
        scheme = "https" if settings["ssl_certfile"] else "http"
        url_host = f"[{host}]" if ":" in host else host
        print(
            f"Serving {cfg.get('model_uri') or ckpt_path} at {scheme}://{url_host}:{port}/ (threshold "
            f"{service.stored_threshold:.4f}, precision {service.predictor.precision}"
            f"{', password required' if auth else ''}); Ctrl-C stops it",
            flush=True,
        )
        log.info(
            "uploads go to %s (each removed after %g s, the folder kept under %g MB and removed at exit)",
            work_dir,
            settings["upload_ttl_s"],
            settings["upload_dir_max_mb"],
        )
        page.launch(
            server_name=host,
            server_port=port,
            share=False,
            auth=auth,
            max_file_size=settings["limits"].max_bytes,
            inbrowser=settings["open_browser"],
            ssr_mode=False,
            mcp_server=False,
            enable_monitoring=False,
            show_error=False,
            quiet=True,
            footer_links=[],
            ssl_certfile=settings["ssl_certfile"],
            ssl_keyfile=settings["ssl_keyfile"],
            auth_message=lockout if auth else None,
            app_kwargs={"middleware": middleware},
        )
    except KeyboardInterrupt:
        pass
    finally:
        if janitor is not None:
            janitor.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
        log.info("stopped; %s removed", work_dir)
