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
    `ConfigError` that names the config key (`trainer.devices=4: ...`), and the key's prefix
    put before the bare argument a class's own check names (`max_pixels=0 ...` ->
    `data.max_pixels=0 ...`)."""
    from hydra.errors import InstantiationException

    check_arguments(key, node)
    try:
        built = instantiate(node, **kwargs)
        return built(**call) if call is not None else built
    except ConfigError as err:  # a class's own check names its bare argument: the key gets `key.`
        from pneumonia.signature import with_prefix

        raise with_prefix(err, f"{key}.", node.keys() if hasattr(node, "keys") else ()) from None
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
    signature is the schema, `pneumonia.signature`): `trainer.enable_progress_bar=maybe` or
    `optimizer.lr=abc` is a one-line `ConfigError` naming the key, where the class itself
    would fail later with a message that names no key (or take "maybe" as true). Arguments
    whose declared type cannot be told apart from a config value are left to the class.
    `target`: the class, when `node` has no `_target_` (e.g. a net of the model registry)."""
    from omegaconf import DictConfig, OmegaConf

    from pneumonia.signature import THIRD_PARTY_HINTS, hints_of

    name = None
    if target is None:
        if not isinstance(node, (dict, DictConfig)) or "_target_" not in node:
            return
        from hydra._internal.utils import _locate

        name = str(node["_target_"])
        try:
            target = _locate(name)
        except Exception:
            raise ConfigError(f"{key}._target_={node['_target_']!r} cannot be imported") from None
    hints = {**hints_of(target), **THIRD_PARTY_HINTS.get(name or "", {})}
    values = {str(leaf): node[leaf] for leaf in node.keys() if not str(leaf).startswith("_") and str(leaf) in hints}
    values = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in values.items()}
    check_node_values(hints, values, key, node)


def check_node_values(hints: dict[str, Any], values: dict[str, Any], key: str, node: Any) -> None:
    """`pneumonia.signature.check_values` for the config node at `key`, naming the key the user
    set when a value is copied from another (`model.image_size: ${data.image_size}` fails as
    `data.image_size=24 ...`)."""
    from pneumonia.signature import check_values

    try:
        check_values(hints, values, prefix=f"{key}.")
    except ConfigError as err:
        for leaf in values:
            source = _interpolated_from(node, leaf)
            if source and str(err).startswith(f"{key}.{leaf}="):
                raise ConfigError(source + str(err)[len(f"{key}.{leaf}") :]) from None
        raise


def _interpolated_from(node: Any, leaf: str) -> str | None:
    """The key `node.leaf` copies when it is a plain interpolation (`${data.image_size}`)."""
    import re

    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig) or not OmegaConf.is_interpolation(node, leaf):
        return None
    plain = OmegaConf.to_container(node, resolve=False)  # the interpolation's text, unresolved
    raw = plain.get(leaf) if isinstance(plain, dict) else None
    found = re.fullmatch(r"\$\{([A-Za-z_][\w.]*)\}", str(raw))
    return found.group(1) if found else None
