"""Compose the project's real configs for tests: CPU, no workers, tiny models and data."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

import pneumonia.resolvers  # noqa: F401  (resolvers used by conf/)

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

# A small, quick version of the custom CNN that still learns the synthetic pattern.
TINY = [
    "debug=tiny",
    "data.val_fraction=0.25",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=null",
]


def compose_cfg(config_name: str, overrides: list[str], out_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    return cfg


def train_cfg(root: Path, out_dir: Path, *overrides: str, tiny: bool = True) -> DictConfig:
    return compose_cfg(
        "train",
        [f"data.root={root}", f"data.cache_dir={out_dir / 'cache'}", *(TINY if tiny else []), *overrides],
        out_dir,
    )


class KillAfterEpoch:
    """Test callback: the process kills itself (SIGKILL, like an OOM kill or a pulled plug)
    once epoch `epoch` (0-based) is over and its checkpoints were written: at the start of
    the next epoch (checkpoint callbacks run after all others at an epoch's end)."""

    def __new__(cls, epoch: int = 1, sig: str = "SIGKILL"):
        import os
        import signal

        import lightning as L

        class _Kill(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                if trainer.current_epoch == epoch + 1:
                    os.kill(os.getpid(), getattr(signal, sig))

        return _Kill()
