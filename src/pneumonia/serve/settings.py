"""`serve.*`: the HTTP API's settings, declared in `ServeSettings.__init__`'s signature (the
schema `pneumonia.signature` reads without importing, so `serve.py` refuses a bad value before
torch is imported). Nothing here imports torch or litserve."""

from __future__ import annotations

import hmac
from typing import Any, Literal

from pneumonia.config.plain import to_dict
from pneumonia.errors import ConfigError
from pneumonia.signature import Annotated, Ge, Gt, Le, MinLen, check_arguments

MB = 1024 * 1024


class ServeSettings:
    """The checked `serve:` node of conf/serve.yaml (each key is commented there)."""

    def __init__(
        self,
        host: Annotated[str, MinLen(1)] = "127.0.0.1",
        port: Annotated[int, Ge(0), Le(65535)] = 8000,
        api_key: str | None = None,
        workers: Annotated[int, Ge(1), Le(64)] = 1,
        max_batch_size: Annotated[int, Ge(1), Le(1024)] = 8,
        batch_timeout: Annotated[float, Ge(0), Le(10)] = 0.01,
        timeout: Annotated[float, Gt(0)] = 30,
        max_file_mb: Annotated[float, Gt(0), Le(4096)] = 20,
        max_megapixels: Annotated[float, Gt(0), Le(10000)] = 64,
        gradcam: bool = True,
        log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning",
    ) -> None:
        check_arguments(type(self), locals())
        if api_key is not None and len(api_key) < 8:
            raise ConfigError("serve.api_key must be at least 8 characters (or unset for no key)")
        if batch_timeout >= timeout:
            raise ConfigError(f"serve.batch_timeout={batch_timeout} must be shorter than serve.timeout={timeout}")
        self.host, self.port, self.api_key = host, port, api_key or None
        self.workers, self.max_batch_size, self.batch_timeout = workers, max_batch_size, float(batch_timeout)
        self.timeout = float(timeout)
        self.max_file_mb, self.max_megapixels = max_file_mb, max_megapixels
        self.gradcam, self.log_level = gradcam, log_level

    @classmethod
    def from_config(cls, node: Any) -> ServeSettings:
        """From the `serve:` node; a `ConfigError` naming `serve.<key>` for a bad value."""
        from omegaconf import OmegaConf

        values = to_dict(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        try:
            return cls(**values)
        except TypeError as err:  # an unknown key
            raise ConfigError(f"serve: {err}") from None
        except ConfigError as err:
            text = str(err)
            raise ConfigError(text if text.startswith("serve.") else f"serve.{text}") from None

    @property
    def max_bytes(self) -> int:
        return int(self.max_file_mb * MB)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)

    def key_matches(self, given: str | None) -> bool:
        """True when no key is set, or `given` is the key (compared in constant time)."""
        if self.api_key is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.api_key.encode())


def check_model_source(cfg: Any) -> str:
    """'torch' for ckpt_path=, 'onnx' for model_path= or model_uri= (a registered export,
    downloaded to a model_path by `server.from_registry`); exactly one of them."""
    sources = [bool(cfg.get(key)) for key in ("ckpt_path", "model_path", "model_uri")]
    if sum(sources) != 1:
        raise ConfigError(
            "serve.py needs ckpt_path=<best.ckpt> (torch), model_path=<export>/model.onnx (onnx) or "
            "model_uri=models:/<name>@<alias> (a registered ONNX export), exactly one of them"
        )
    return "torch" if cfg.get("ckpt_path") else "onnx"
