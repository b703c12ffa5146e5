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
    """Check a composed train config before any image is decoded.

    Each value is checked once, by its owner: `data.*` by the DataModule (and
    `data.image_size`/`model.in_channels` by the preprocessing preset), `model.*` by the
    network, `data.augment.*` by the augmentation; both are built here (milliseconds, no
    decoding). The keys without an owner class are checked below.
    """
    _int(cfg, "seed")
    _int(cfg, "data.num_workers", 0)
    _int(cfg, "trainer.max_epochs", -1)
    _number(cfg, "optimizer.lr")
    if cfg.monitor_mode not in ("min", "max"):
        raise ConfigError(f"monitor_mode={cfg.monitor_mode!r} must be 'min' or 'max'")
    pw = cfg.module.pos_weight
    if pw is not None and pw != "balanced" and (isinstance(pw, bool) or not isinstance(pw, (int, float)) or pw <= 0):
        raise ConfigError(f"module.pos_weight={pw!r} must be null, 'balanced' or a positive number")
    from pneumonia.config.instantiate import instantiate
    from pneumonia.models import build_net

    instantiate(cfg.data, _convert_="all")  # the DataModule's constructor checks data.*; no decoding
    # a depth too large for the image size fails now, not after the images are decoded
    build_net(OmegaConf.to_container(cfg.model, resolve=True))


def threshold_override(value: object) -> float | None:
    """A decision threshold given on the command line (`threshold=`): null (use the stored
    one) or a number in [0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"threshold={value!r} must be a number in [0, 1] (or null: the stored one)")
    return float(value)
