"""`hydra.utils.instantiate` with the project's one-line errors left unwrapped."""

from __future__ import annotations

from typing import Any

from pneumonia.errors import UserError


def instantiate(node: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, but our one-line errors come out unwrapped instead of
    inside Hydra's multi-line InstantiationException."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise
