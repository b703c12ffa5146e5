"""Runs that survive: a killed run resumes exactly, seeds reproduce, divergence stops safely."""

import json

import pytest
import torch

from pneumonia.errors import ConfigError, UserError
from pneumonia.inference.checkpoint import load_checkpoint
from pneumonia.models.classifier import PneumoniaClassifier
from pneumonia.runners.train import train
from tests.helpers import run_cli, train_cfg


@pytest.mark.slow
def test_killed_run_resumed_ends_like_an_uninterrupted_one(xray_root, tmp_path):
    common = [
        f"data.root={xray_root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "debug=tiny",
        "data.val_fraction=0.25",
        "trainer.max_epochs=4",
        "trainer.deterministic=true",
        "callbacks.early_stopping=null",
        "callbacks.progress_bar=null",
        "seed=5",
        "logger=csv",
    ]
    whole = tmp_path / "whole"
    assert run_cli("train.py", *common, f"hydra.run.dir={whole}").returncode == 0
    killed = tmp_path / "killed"
    res = run_cli(
        "train.py", *common, f"hydra.run.dir={killed}", "+callbacks.kill._target_=tests.helpers.KillAfterEpoch"
    )
    assert res.returncode != 0  # SIGKILL after epoch index 1, i.e. 2 of 4 epochs done
    killed_last = load_checkpoint(killed / "checkpoints" / "last.ckpt")
    assert killed_last["epoch"] == 1
    first_part = killed_last["callbacks"]["TrainingClock"]["seconds"]
    assert not (killed / "train_summary.json").exists()
    first_config = (killed / ".hydra" / "config.yaml").read_text()
    res = run_cli("train.py", *common, f"resume={killed}")  # no hydra.run.dir: resume picks the run's own folder
    assert res.returncode == 0, res.stderr[-2000:]
    assert (killed / ".hydra" / "config.yaml").read_text() == first_config  # earlier outputs kept
    assert list(killed.glob(".hydra-resume-*/config.yaml"))
    a = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-6), k
    clock = b["callbacks"]["TrainingClock"]["seconds"]
    summary = json.loads((killed / "train_summary.json").read_text())
    assert 0 < first_part < clock <= summary["train_seconds"] + 0.1  # the killed session's time is counted
    assert summary["session_train_seconds"] < summary["train_seconds"] - first_part + 1
    va = json.loads((whole / "val_metrics.json").read_text())["at_0.5"]
    vb = json.loads((killed / "val_metrics.json").read_text())["at_0.5"]
    assert va == pytest.approx(vb, abs=1e-6)


def test_resume_from_a_missing_run_is_a_clear_error(xray_root, tmp_path):
    cfg = train_cfg(xray_root, tmp_path, f"resume={tmp_path / 'nothing'}")
    with pytest.raises(ConfigError, match="no checkpoints/last.ckpt"):
        train(cfg)


def test_same_seed_deterministic_runs_agree(xray_root, tmp_path):
    reports = []
    for run in ("a", "b"):
        cfg = train_cfg(
            xray_root, tmp_path / run, "trainer.max_epochs=2", "trainer.deterministic=true", "seed=11", "logger=none"
        )
        reports.append(train(cfg)[1])
    assert reports[0] == reports[1]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(xray_root, tmp_path, monkeypatch):
    original = PneumoniaClassifier.training_step

    def diverge(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.current_epoch == 1 and batch_idx == 2 else loss

    monkeypatch.setattr(PneumoniaClassifier, "training_step", diverge)
    cfg = train_cfg(xray_root, tmp_path, "trainer.max_epochs=3", "logger=none")
    with pytest.raises(UserError, match="non-finite training loss.*epoch 1, batch 2.*last good checkpoint"):
        train(cfg)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
