"""Compose the project's configs from code (tests, benchmarks, notebooks), as the entry
points would from the command line."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def compose(
    config_name: str, overrides: list[str], output_dir: str | Path | None = None, *, hydra_config: bool = False
) -> DictConfig:
    """`conf/<config_name>.yaml` with `overrides`; `paths.output_dir` set to `output_dir`
    (Hydra sets it from the run folder when an entry point runs). `hydra_config=True` keeps
    the `hydra:` node (sweeper, launcher, run folders)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra_config)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg
