"""Config nodes as plain Python values, typed: `OmegaConf.to_container` returns a wide union
(dict, list, str, None ...), so each caller would otherwise need its own cast."""

from __future__ import annotations

from typing import Any, cast

from omegaconf import OmegaConf


def to_dict(node: Any, *, resolve: bool = False) -> dict[str, Any]:
    """`OmegaConf.to_container(node, resolve=resolve)` of a mapping node (a `DictConfig`), typed
    as the plain dict it returns."""
    return cast(dict[str, Any], OmegaConf.to_container(node, resolve=resolve))
