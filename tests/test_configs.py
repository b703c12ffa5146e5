"""Every option of every config group composes and instantiates."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pneumonia.models import build_net
from pneumonia.runners.common import build_callbacks, build_loggers
from tests.helpers import CONF_DIR, compose_cfg, train_cfg


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def instantiate_all(cfg, root):
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.hparams.root == str(root)
    net = build_net(OmegaConf.to_container(cfg.model, resolve=True))
    x = torch.zeros(2, cfg.model.in_channels, cfg.data.image_size, cfg.data.image_size)
    assert net(x).shape == (2,)
    opt = instantiate(cfg.optimizer)(params=net.parameters())
    if cfg.scheduler:
        instantiate(cfg.scheduler.scheduler)(optimizer=opt)
    loggers = build_loggers(cfg)
    trainer = instantiate(cfg.trainer, callbacks=build_callbacks(cfg, bool(loggers)), logger=loggers or False)
    return trainer


@pytest.mark.parametrize(
    "group",
    [
        "data",
        pytest.param("model", marks=pytest.mark.slow),  # builds every torchvision backbone
        "optimizer",
        "scheduler",
        "trainer",
        "callbacks",
        pytest.param("logger", marks=pytest.mark.slow),  # imports MLflow and W&B
        pytest.param("experiment", marks=pytest.mark.slow),
        "debug",
    ],
)
def test_every_option_composes_and_instantiates(group, xray_root, tmp_path):
    opts = options(group)
    assert opts, f"conf/{group} is empty"
    for option in opts:
        if group == "trainer" and option in ("gpu", "ddp") and not torch.cuda.is_available():
            cfg = train_cfg(xray_root, tmp_path, f"{group}={option}", tiny=False)
            assert cfg.trainer.accelerator == "gpu"  # composes; instantiating needs a GPU
            continue
        # MLflow's client opens (and creates) its store when built: one in tmp_path, not outputs/
        cfg = train_cfg(
            xray_root, tmp_path, f"{group}={option}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'ml.db'}", tiny=False
        )
        instantiate_all(cfg, xray_root)


def test_sweeper_and_launcher_options_compose(xray_root, tmp_path):
    from pneumonia.config.compose import compose

    assert options("hparams_search") == ["optuna"]
    cfg = compose("train", [f"data.root={xray_root}", "hparams_search=optuna"], tmp_path, hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"  # monitor_mode=max
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert {"optimizer.lr", "model.depth", "data.batch_size"} <= set(sweeper.params)
    cfg = compose(
        "train",
        [f"data.root={xray_root}", "hparams_search=optuna", "monitor=val/loss", "monitor_mode=min"],
        tmp_path,
        hydra_config=True,
    )
    assert cfg.hydra.sweeper.direction == "minimize"

    assert options("launcher") == ["submitit_local", "submitit_slurm"]
    for option, target in (("submitit_local", "LocalLauncher"), ("submitit_slurm", "SlurmLauncher")):
        cfg = compose("train", [f"data.root={xray_root}", f"launcher={option}"], tmp_path, hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith(target)
        assert cfg.hydra.launcher.tasks_per_node == 1 and cfg.hydra.launcher.timeout_min > 0


def test_eval_config_requires_a_checkpoint(tmp_path):
    cfg = compose_cfg("eval", [], tmp_path)
    assert OmegaConf.is_missing(cfg, "ckpt_path")


def test_seed_replica_is_the_original_recipe(xray_root, tmp_path):
    cfg = train_cfg(xray_root, tmp_path, "experiment=seed_replica", tiny=False)
    assert (cfg.data.image_size, cfg.model.in_channels, cfg.data.batch_size) == (150, 3, 64)
    assert cfg.trainer.max_epochs == 30 and cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.callbacks.early_stopping.patience == 5 and cfg.callbacks.early_stopping.monitor == "val/loss"


def test_model_and_data_agree_on_channels_and_size(xray_root, tmp_path):
    cfg = train_cfg(xray_root, tmp_path, "model.in_channels=3", "data.image_size=96", tiny=False)
    assert cfg.data.channels == 3 and cfg.model.image_size == 96


@pytest.mark.parametrize(
    "overrides, dropped",
    [
        (["trainer.enable_progress_bar=false"], "TQDMProgressBar"),
        (["logger=none"], "LearningRateMonitor"),
    ],
)
def test_callbacks_follow_trainer_settings(overrides, dropped, xray_root, tmp_path):
    # Lightning rejects a progress bar callback beside enable_progress_bar=false (found on a GPU run)
    cfg = train_cfg(xray_root, tmp_path, *overrides, "trainer.accelerator=cpu", tiny=False)
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, bool(loggers))
    assert dropped not in {type(c).__name__ for c in callbacks}
    assert "FiniteLossGuard" in {type(c).__name__ for c in callbacks}
    instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
