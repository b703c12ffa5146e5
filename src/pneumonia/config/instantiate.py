"""`hydra.utils.instantiate` with the project's one-line errors left unwrapped."""

from __future__ import annotations

from typing import Any

from pneumonia.errors import ConfigError, UserError


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


def instantiate_setting(key: str, node: Any, *, call: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """`instantiate(node, **kwargs)` (then, for a `_partial_` node, the partial called with
    `call`), with the errors of Lightning's and torch's argument checks turned into a
    `ConfigError` that names the config key (`trainer.devices=4: ...`)."""
    from hydra.errors import InstantiationException

    check_arguments(key, node)
    try:
        built = instantiate(node, **kwargs)
        return built(**call) if call is not None else built
    except UserError:
        raise
    except Exception as err:  # constructors refuse bad arguments with many types (Lightning: MisconfigurationException)
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        raise ConfigError(f"{_culprit(key, node, cause)}: {_first_line(cause)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def _culprit(key: str, node: Any, err: BaseException) -> str:
    """`key.<leaf>=<value>` for the leaf of `node` the error message names (Lightning says
    `Trainer(devices=4)` or "`accelerator`"; torch "Invalid learning rate"), else `key`."""
    import re

    text = str(err).lower()
    names = {"learning rate": "lr", "epsilon": "eps", "beta parameter": "betas"}
    for leaf in node.keys() if hasattr(node, "keys") else ():
        leaf = str(leaf)
        if leaf.startswith("_"):
            continue
        spelled = [re.escape(leaf.lower())] + [re.escape(p) for p, name in names.items() if name == leaf]
        if any(re.search(rf"(?<![a-z_]){s}(?![a-z_])", text) for s in spelled):
            return f"{key}.{leaf}={node[leaf]!r}"
    return key


def check_arguments(key: str, node: Any, target: Any = None) -> None:
    """Each value of `node` against the type its class declares for that argument (the
    signature is the schema): `trainer.enable_progress_bar=maybe` or
    `optimizer.lr=abc` is a one-line `ConfigError` naming the key, where the class itself
    would fail later with a message that names no key (or take "maybe" as true). Arguments
    whose declared type cannot be told apart from a config value are left to the class.
    `target`: the class, when `node` has no `_target_` (e.g. a net of the model registry)."""
    import typing

    from omegaconf import DictConfig, OmegaConf

    if target is None:
        if not isinstance(node, (dict, DictConfig)) or "_target_" not in node:
            return
        from hydra._internal.utils import _locate

        try:
            target = _locate(str(node["_target_"]))
        except Exception:
            raise ConfigError(f"{key}._target_={node['_target_']!r} cannot be imported") from None
    try:
        hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except Exception:  # annotations that do not resolve: the class checks its own arguments
        return
    for leaf in node.keys():
        leaf = str(leaf)
        if leaf.startswith("_") or leaf not in hints:
            continue
        value = node[leaf]
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if _matches(value, hints[leaf]) is False:
            raise ConfigError(f"{key}.{leaf}={value!r} must be {_describe(hints[leaf])}")


def _matches(value: Any, hint: Any) -> bool | None:
    """True/False when `value` is/is not of the declared type; None when it cannot be told."""
    import collections.abc
    import pathlib
    import types
    import typing

    if hint is typing.Any:
        return True
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, a) for a in args]
        return True if any(r is True for r in results) else (False if all(r is False for r in results) else None)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is pathlib.Path:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple))
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if isinstance(hint, type):
        if isinstance(value, dict) and "_target_" in value:
            return None  # built by instantiate itself
        return isinstance(value, hint)
    return None


def _describe(hint: Any) -> str:
    import pathlib
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = list(dict.fromkeys(_describe(a) for a in args))
        return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             type(None): "null", pathlib.Path: "a path"}
    if hint in names:
        return names[hint]
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    return f"a {getattr(hint, '__name__', str(hint))}"
