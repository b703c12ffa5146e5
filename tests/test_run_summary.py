"""How a run ends (its summary), the mistakes that only show once a run starts (turned into
one line before decoding), the decoded-image cache command and the console commands."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from pneumonia.data import cache
from pneumonia.tools.cache import main as cache_main
from pneumonia.runners.train import train
from tests.helpers import run_cli, train_cfg


def _summary(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.name == "pneumonia.runners.train"]
    return lines[-1]


def test_summary_of_a_finished_run(xray_root, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    train(train_cfg(xray_root, tmp_path, "trainer.max_epochs=2", "logger=csv", "callbacks.early_stopping=null"))
    how, where, nxt = _summary(caplog).splitlines()
    assert how.startswith("Trained 2 epochs (trainer.max_epochs=2); best val/auroc = ")
    assert " at epoch " in how and "limit_val_batches" not in how
    assert where.startswith(f"Outputs in {tmp_path}: checkpoints/best.ckpt (threshold ")
    assert "val_metrics.json" in where and "csv/" in where
    assert nxt == f"Next: python eval.py ckpt_path={tmp_path / 'checkpoints' / 'best.ckpt'}"


def test_summary_of_a_tta_run_says_which_score_is_which(xray_root, tmp_path, caplog):
    import json

    caplog.set_level(logging.INFO)
    train(
        train_cfg(
            xray_root, tmp_path, "trainer.max_epochs=1", "logger=none", "callbacks.early_stopping=null", "data.tta=true"
        )
    )
    how = _summary(caplog).splitlines()[0]
    tta_auroc = json.loads((tmp_path / "val_metrics.json").read_text())["at_threshold"]["auroc"]
    assert how.endswith(
        f"(validation during training scores without TTA; val_metrics.json scores the same "
        f"checkpoint with the recipe's TTA: auroc {tta_auroc:.4f})"
    )


def test_summary_says_early_stopping_and_limited_validation(xray_root, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    # every epoch after the first is "no improvement" by 10: patience 1 stops at the second epoch
    train(
        train_cfg(
            xray_root,
            tmp_path,
            "trainer.max_epochs=5",
            "logger=none",
            "trainer.limit_val_batches=1",
            "callbacks.early_stopping.min_delta=10",
            "callbacks.early_stopping.patience=1",
        )
    )
    how = _summary(caplog).splitlines()[0]
    assert how.startswith("Stopped early after 2 epochs: val/loss did not improve for 1 epochs")
    assert "trainer.limit_val_batches=1 kept; val_metrics.json scores the whole validation split" in how


def test_resume_with_fewer_epochs_than_done_is_one_line_before_decoding(xray_root, tmp_path):
    run = tmp_path / "run"
    train(train_cfg(xray_root, run, "trainer.max_epochs=3", "logger=none", "callbacks.early_stopping=null"))
    shutil.rmtree(run / "cache")  # a decode would rebuild it: it must stay absent
    cfg = train_cfg(xray_root, run, f"resume={run}", "trainer.max_epochs=2", "logger=none")
    from pneumonia.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"trainer.max_epochs=2 is below the 3 epochs .* trainer.max_epochs=4 or more"
    ):
        train(cfg)
    # another network than the checkpoint's (the first run's overrides forgotten): one line
    cfg = train_cfg(xray_root, run, f"resume={run}", "trainer.max_epochs=5", "logger=none", "model.depth=2")
    with pytest.raises(
        ConfigError,
        match=r"builds another network than the checkpoint's: model.depth=2 "
        r"\(the checkpoint: 3\)",
    ):
        train(cfg)
    assert not (run / "cache").exists()


@pytest.mark.slow
def test_printed_commands_paste_back(tmp_path):
    from pneumonia.config.entry import cli_override

    folder = tmp_path / "0_model.depth=2,seed=1"
    folder.mkdir()
    assert cli_override("ckpt_path", "/a/b.ckpt") == "ckpt_path=/a/b.ckpt"
    word = cli_override("ckpt_path", folder / "best.ckpt")
    res = run_cli("eval.py", word.strip("'"), f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2 and f"ckpt_path '{folder / 'best.ckpt'}' does not exist" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, expected",
    [
        ("optimizer.lr=-1", "error: optimizer.lr=-1 must be a number >= 0"),
        ("trainer.accelerator=gpu", "error: trainer.accelerator=gpu: this machine has no usable CUDA GPU"),
        ("trainer.max_epochs=0", "error: trainer.max_epochs=0 must be >= 1"),
        ("trainer.enable_progress_bar=maybe", "error: trainer.enable_progress_bar='maybe' must be true or false"),
        ("monitor=val/auc", "error: monitor='val/auc' is not a logged metric"),
    ],
)
def test_run_time_mistakes_are_one_line(override, expected, xray_root, tmp_path):
    res = run_cli(
        "train.py",
        f"data.root={xray_root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        override,
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected), res.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()  # nothing decoded, nothing left


def test_data_root_that_is_a_file_says_so(tmp_path):
    a_file = tmp_path / "data.zip"
    a_file.write_bytes(b"PK")
    res = run_cli("train.py", f"data.root={a_file}", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2 and "is a file, not a folder" in res.stderr and "data.root" in res.stderr


def test_cache_command_lists_and_clears(xray_root, tmp_path, capsys):
    from pneumonia.data.datamodule import ChestXrayDataModule

    for size in (32, 48):
        dm = ChestXrayDataModule(root=str(xray_root), image_size=size, cache_dir=str(tmp_path), val_fraction=0.25)
        dm.setup("fit")
    found = cache.entries(tmp_path)
    assert len(found) == 2 and all(e.complete and e.bytes > 0 for e in found)
    assert sorted(e.image_size for e in found) == ["32 px x 1 ch", "48 px x 1 ch"]
    assert cache_main([str(tmp_path)]) == 0
    assert "2 caches" in capsys.readouterr().out
    assert cache_main([str(tmp_path), "--clear", "--older-than", "1"]) == 0  # both used today: kept
    assert len(cache.entries(tmp_path)) == 2
    assert cache_main([str(tmp_path), "--clear"]) == 0
    assert cache.entries(tmp_path) == [] and "Deleted 2 of 2" in capsys.readouterr().out
    assert cache_main([str(tmp_path), "--older-than", "1"]) == 2  # --older-than goes with --clear


def test_default_cache_does_not_depend_on_the_working_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("PNEUMONIA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == str(tmp_path / "xdg" / "pneumonia" / "images")
    monkeypatch.setenv("PNEUMONIA_CACHE_DIR", str(tmp_path / "mine"))
    from pneumonia.config.compose import compose
    from pneumonia.config.instantiate import instantiate

    cfg = compose("train", [], tmp_path)
    assert cfg.data.cache_dir == "auto"  # resolved where it runs: checkpoints keep "auto", not a path
    assert instantiate(cfg.data, _convert_="all").cache_dir == str(tmp_path / "mine")


def test_console_command_runs_the_checkout_script(tmp_path):
    exe = shutil.which("pneumonia-train")
    if exe is None:
        pytest.skip("the package is not installed with its console commands (pip install -e .)")
    import subprocess

    res = subprocess.run([exe, "model=nope"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: model=nope is not an option of model/")
    assert Path(exe).is_file()


def test_module_compile_is_for_training_only(monkeypatch):
    import torch

    from pneumonia.config.compose import compose
    from pneumonia.models.classifier import PneumoniaClassifier
    from omegaconf import OmegaConf

    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(type(self).__name__))
    net = OmegaConf.to_container(compose("train", ["model.depth=3", "data.image_size=48"]).model, resolve=True)
    module = PneumoniaClassifier(net=net, compile=True)
    module.setup("validate")
    assert calls == []
    module.setup("fit")
    assert calls == ["CustomCNN"]
    assert all(
        k.startswith(("net.", "threshold", "pos_weight")) or "metrics" in k or "loss" in k for k in module.state_dict()
    )  # compiled in place: the checkpoint keeps its keys
    PneumoniaClassifier(net=net).setup("fit")  # off by default
    assert calls == ["CustomCNN"]
