"""Checks of a composed config that need no torch, Lightning or model: the entry points run
them on the command line's config before Hydra starts the job (`entry.check_command_line`),
so a bad value is one `error:` line in about a second instead of after torch and Lightning
are imported (docs: performance, "Start-up").

Nothing new is declared here: the keys without an owner class are checked by
`checks.check_train_settings`, and every node built from the config (`_target_`, and the
two built by the project's own code) is checked against its class's signature read from
the source (`pneumonia.signature.static_hints`), the same declarations the classes enforce.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from pneumonia.errors import ConfigError, UserError

# nodes built from their config without a `_target_` of their own: key -> class
OWNERS = {
    "module": "pneumonia.models.classifier.PneumoniaClassifier",
    "data.augment": "pneumonia.data.augment.BatchAugment",
    "serve": "pneumonia.serve.settings.ServeSettings",
    "mlflow": "pneumonia.tracking.settings.MlflowSettings",
    "threshold": "pneumonia.evaluation.threshold.threshold_settings",  # a function: its signature
}
# checked elsewhere, or typed looser than the class (pos_weight: "balanced" is resolved first)
SKIP = {"module": ("pos_weight",)}


def quick_check(config_name: str, cfg: DictConfig) -> None:
    """Raise a `ConfigError` for the first value of `cfg` (`conf/<config_name>.yaml`
    composed) that can be refused without importing torch or Lightning."""
    from pneumonia.runners import checks

    if config_name == "train":
        checks.check_train_settings(cfg, quick=True)
    if "trainer" in cfg:
        checks.check_trainer(cfg, quick=True)
    if config_name == "eval":
        checks.check_eval_values(cfg)
    if config_name == "serve":
        _check_serve(cfg)
    if config_name == "export":
        from pneumonia.export.runner import check_registration

        check_registration(cfg)
    if config_name == "app" and cfg.get("model_uri") is not None and not OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("app.py scores one model: give ckpt_path= or model_uri=, not both")
    if config_name in ("predict", "serve", "app") and cfg.get("model_uri") is not None:
        from pneumonia.tracking.registry import parse_model_uri

        parse_model_uri(cfg.model_uri)
    if config_name in ("eval", "predict", "export", "app", "serve"):
        _check_checkpoint(cfg)
    for key, node in _built_nodes(cfg):
        check_node(key, node)
    if config_name == "train":
        _check_root(cfg)


def _check_serve(cfg: DictConfig) -> None:
    """serve.py: one model source, a threshold in [0, 1], the thread count."""
    from pneumonia.runners import checks

    if sum(bool(cfg.get(key)) for key in ("ckpt_path", "model_path", "model_uri")) != 1:
        raise ConfigError(
            "serve.py needs ckpt_path=<best.ckpt> (torch), model_path=<export>/model.onnx (onnx) or "
            "model_uri=models:/<name>@<alias> (a registered ONNX export), exactly one of them"
        )
    checks.threshold_override(cfg.get("threshold"))
    checks._optional_int(cfg, "threads", 1)


def _check_checkpoint(cfg: DictConfig) -> None:
    """A `ckpt_path=` that is not a file: the checkpoint reader's own one line, before torch.
    (predict.py with backend=onnx reads `model_path=` instead and ignores it.)"""
    from pneumonia.io import checkpoint_file

    if "ckpt_path" not in cfg or OmegaConf.is_missing(cfg, "ckpt_path") or cfg.get("backend") == "onnx":
        return
    path = cfg.get("ckpt_path")
    if isinstance(path, str) and path:
        checkpoint_file(path)


def _check_root(cfg: DictConfig) -> None:
    """A data root that does not exist (and is not to be downloaded): the layout's own error."""
    from pathlib import Path

    root = cfg.data.get("root")
    if isinstance(root, str) and not cfg.data.get("download") and not Path(root).expanduser().is_dir():
        from pneumonia.data.folder import scan_split

        scan_split(root, "train")  # raises the DataLayoutError that names what is expected


def _built_nodes(cfg: DictConfig, prefix: str = "") -> list[tuple[str, DictConfig]]:
    """(key, node) for each node with a `_target_`, and the OWNERS nodes, outside `hydra:`."""
    found: list[tuple[str, DictConfig]] = []
    for key in cfg.keys():
        name = f"{prefix}{key!s}"
        if name == "hydra":
            continue
        try:
            node = cfg._get_node(key)
        except Exception:
            continue
        if OmegaConf.is_dict(node) and not OmegaConf.is_missing(cfg, key) and cfg[key] is not None:
            if "_target_" in cfg[key] or name in OWNERS:
                found.append((name, cfg[key]))
            found.extend(_built_nodes(cfg[key], f"{name}."))
    return found


def check_node(key: str, node: DictConfig) -> None:
    from pneumonia.config.instantiate import check_node_values
    from pneumonia.signature import static_hints

    target = OWNERS.get(key) or str(node.get("_target_"))
    hints = static_hints(target)
    if not hints:
        return  # source not found (a third-party class we hold no declarations for): checked when built
    values = {name: value for name, value in _values(node, hints) if name not in SKIP.get(key, ())}
    check_node_values(hints, values, key, node)


def _values(node: DictConfig, hints: dict[str, Any]) -> list[tuple[str, Any]]:
    """The node's values the hints cover, resolved; values whose interpolation needs torch
    (the precision's `auto_precision`) or Hydra's runtime are left to the full checks."""
    out = []
    for name in node.keys():
        name = str(name)
        if name.startswith("_") or name not in hints:
            continue
        raw = node._get_node(name)
        assert raw is not None  # one of the node's keys
        if OmegaConf.is_interpolation(node, name) and "auto_precision" in str(raw._value()):
            continue
        try:
            value = node[name]
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
        except Exception:  # noqa: BLE001 - an interpolation of Hydra's runtime: checked when the job runs
            continue
        out.append((name, value))
    return out


def check_or_fail(config_name: str, cfg: DictConfig) -> str | None:
    """`quick_check` as the command line wants it: the error's one line, or None."""
    try:
        quick_check(config_name, cfg)
    except UserError as err:
        return str(err)
    return None
