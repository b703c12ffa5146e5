"""Small value checks any layer may use: a wrong value is a `ConfigError` naming its key.
A leaf: imports only `pneumonia.errors`."""

from __future__ import annotations

from pneumonia.errors import ConfigError


def optional_int(value: object, key: str, low: int) -> int | None:
    """`value` if it is null or an integer >= `low`; else a `ConfigError` naming `key`
    (thread counts, sizes: `threads`, `decode_threads`...)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}={value!r} must be an integer >= {low} (or null)")
    return value


def threshold_override(value: object) -> float | None:
    """A decision threshold given on the command line (`threshold=`): null (use the stored
    one) or a number in [0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"threshold={value!r} must be a number in [0, 1] (or null: the stored one)")
    return float(value)


def check_temperature(temperature: object) -> float:
    """`temperature` as a float; a `ConfigError` unless it is a positive finite number."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0.0 < float(temperature) < float("inf")
    ):
        raise ConfigError(f"temperature={temperature!r} must be a positive number (1 = no temperature scaling)")
    return float(temperature)


def check_tta(value: object, key: str = "tta") -> bool:
    """A TTA switch: true or false; a `ConfigError` naming `key` otherwise."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    return value
