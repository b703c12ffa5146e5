"""Startup checks of values the YAML types cannot express; each error names its key."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from pneumonia.errors import ConfigError


def _int(cfg: DictConfig, key: str, low: int | None = None) -> int:
    value = cfg
    for part in key.split("."):
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be an integer")
    if low is not None and value < low:
        raise ConfigError(f"{key}={value} must be >= {low}")
    return value


def _number(cfg: DictConfig, key: str) -> float:
    value = cfg
    for part in key.split("."):
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} must be a number")
    return float(value)


def check_train_config(cfg: DictConfig) -> None:
    _int(cfg, "seed")
    _int(cfg, "model.depth", 1)
    _int(cfg, "model.in_channels", 1)
    _int(cfg, "data.image_size", 8)
    _int(cfg, "data.batch_size", 1)
    _int(cfg, "data.eval_batch_size", 1)
    _int(cfg, "data.num_workers", 0)
    _int(cfg, "trainer.max_epochs", -1)
    frac = _number(cfg, "data.val_fraction")
    if not 0.0 < frac < 1.0:
        raise ConfigError(f"data.val_fraction={frac} must be in (0, 1)")
    _number(cfg, "optimizer.lr")
    if cfg.monitor_mode not in ("min", "max"):
        raise ConfigError(f"monitor_mode={cfg.monitor_mode!r} must be 'min' or 'max'")
    pw = cfg.module.pos_weight
    if pw is not None and pw != "balanced" and (isinstance(pw, bool) or not isinstance(pw, (int, float)) or pw <= 0):
        raise ConfigError(f"module.pos_weight={pw!r} must be null, 'balanced' or a positive number")
    # builds the network (milliseconds): a depth too large for the image size fails now,
    # not after the images are decoded
    from pneumonia.lit_module import build_net

    build_net(OmegaConf.to_container(cfg.model, resolve=True))
