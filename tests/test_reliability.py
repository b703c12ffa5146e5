"""Bad files, bad config, resume after a kill, determinism, divergence, safe checkpoints, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia.checkpoints import load_checkpoint
from pneumonia.config_checks import check_train_config
from pneumonia.datamodule import ChestXrayDataModule
from pneumonia.errors import CheckpointError, ConfigError, UserError
from pneumonia.image_folder import DataLayoutError
from pneumonia.lit_module import PneumoniaClassifier
from pneumonia.train_runner import train
from tests.conftest import PROJECT_ROOT
from tests.helpers import train_cfg
from tests.synthetic import make_chest_xray_tree


def add_bad_and_odd_files(root: Path) -> None:
    normal = root / "train" / "NORMAL"
    (normal / "IM-9001-0001.jpeg").write_bytes(b"")  # zero bytes
    good = next(normal.glob("*.jpeg")).read_bytes()
    (normal / "IM-9002-0001.jpeg").write_bytes(good[: len(good) // 3])  # truncated
    (normal / ".DS_Store").write_bytes(b"\0\1junk")
    (normal / "Thumbs.db").write_bytes(b"junk")
    (root / "train" / "__MACOSX" / "NORMAL").mkdir(parents=True)
    (root / "train" / "__MACOSX" / "NORMAL" / "._IM-0101-0001.jpeg").write_bytes(b"junk")
    pneu = root / "train" / "PNEUMONIA"
    gray = np.tile(np.linspace(0, 255, 60, dtype=np.uint8), (60, 1))
    Image.fromarray(gray, "L").convert("P").save(pneu / "person9001_bacteria_1.png")  # palette
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 200)])
    Image.fromarray(rgba, "RGBA").save(pneu / "person9002_bacteria_1.png")  # alpha
    Image.fromarray(gray.astype(np.uint16) * 257).save(pneu / "person9003_bacteria_1.png")  # 16-bit


def test_bad_images_are_skipped_reported_and_odd_modes_decoded(tmp_path):
    root = make_chest_xray_tree(tmp_path / "d", {"train": (20, 20)})
    add_bad_and_odd_files(root)
    report = tmp_path / "run" / "bad_images.tsv"
    dm = ChestXrayDataModule(root=str(root), image_size=32, val_fraction=0.25, cache_dir=None,
                             bad_image_report=str(report))
    dm.setup("fit")
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 43  # 40 + 3 odd modes, 2 bad skipped
    lines = report.read_text().splitlines()
    assert len(lines) == 2 and {Path(ln.split("\t")[0]).name for ln in lines} == {"IM-9001-0001.jpeg",
                                                                                   "IM-9002-0001.jpeg"}
    paths = dm.paths["train"]
    images = dm.splits["train"].images
    sixteen = images[paths.index(str(root / "train" / "PNEUMONIA" / "person9003_bacteria_1.png"))].float()
    assert 100 < sixteen.mean() < 155  # scaled from 16 bits, not clipped to white


def test_on_bad_image_error_stops_before_training_with_the_list(tmp_path):
    root = make_chest_xray_tree(tmp_path / "d", {"train": (6, 6)})
    add_bad_and_odd_files(root)
    dm = ChestXrayDataModule(root=str(root), image_size=32, cache_dir=None, on_bad_image="error")
    with pytest.raises(DataLayoutError, match=r"2 unreadable image\(s\).*IM-9001-0001.jpeg"):
        dm.setup("fit")


@pytest.mark.parametrize("override, key", [
    ("model.depth=abc", "model.depth"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("data.image_size=40;model.depth=5;model.widths=[8,8,8,8,8]", "model.depth=5 is too deep for data.image_size=40"),
    ("optimizer.lr=fast", "optimizer.lr"),
    ("module.pos_weight=-1", "module.pos_weight"),
])
def test_bad_config_values_are_rejected_naming_the_key(override, key, xray_root, tmp_path):
    cfg = train_cfg(xray_root, tmp_path, *override.split(";"))
    with pytest.raises(ConfigError, match=key):
        check_train_config(cfg)


def run_train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "train.py"), *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_unknown_key_and_wrong_type_fail_at_startup_with_one_message(tmp_path):
    res = run_train("model.dept=4", f"hydra.run.dir={tmp_path / 'a'}")
    assert res.returncode != 0 and "model.dept" in res.stderr and "Traceback" not in res.stderr
    res = run_train("model.depth=abc", f"hydra.run.dir={tmp_path / 'b'}")
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == "error: model.depth='abc' must be an integer"


def test_killed_run_resumed_ends_like_an_uninterrupted_one(xray_root, tmp_path):
    common = [f"data.root={xray_root}", f"data.cache_dir={tmp_path / 'cache'}", "debug=tiny", "data.val_fraction=0.25",
              "trainer.max_epochs=4", "trainer.deterministic=true", "callbacks.early_stopping=null",
              "callbacks.progress_bar=null", "seed=5", "logger=csv"]
    whole = tmp_path / "whole"
    assert run_train(*common, f"hydra.run.dir={whole}").returncode == 0
    killed = tmp_path / "killed"
    res = run_train(*common, f"hydra.run.dir={killed}", "+callbacks.kill._target_=tests.helpers.KillAfterEpoch")
    assert res.returncode != 0  # SIGKILL after epoch index 1, i.e. 2 of 4 epochs done
    killed_last = load_checkpoint(killed / "checkpoints" / "last.ckpt")
    assert killed_last["epoch"] == 1
    first_part = killed_last["callbacks"]["TrainingClock"]["seconds"]
    assert not (killed / "train_summary.json").exists()
    first_config = (killed / ".hydra" / "config.yaml").read_text()
    res = run_train(*common, f"resume={killed}")  # no hydra.run.dir: resume picks the run's own folder
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
        cfg = train_cfg(xray_root, tmp_path / run, "trainer.max_epochs=2", "trainer.deterministic=true", "seed=11",
                        "logger=none")
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


def test_checkpoint_that_names_foreign_code_is_refused(xray_root, tmp_path):
    cfg = train_cfg(xray_root, tmp_path, "trainer.max_epochs=1", "logger=none")
    train(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["net"]["_target_"] = "os.system"
    torch.save(ckpt, tmp_path / "evil.ckpt")
    from pneumonia.eval_runner import restore

    with pytest.raises(CheckpointError, match="not a model of this project"):
        restore(load_checkpoint(tmp_path / "evil.ckpt"), {})
    with pytest.raises(CheckpointError, match="not a checkpoint written by this project"):
        torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
        load_checkpoint(tmp_path / "other.ckpt")


def test_ddp_two_cpu_processes_train_once_and_score_like_one(xray_root, tmp_path):
    common = [f"data.root={xray_root}", f"data.cache_dir={tmp_path / 'cache'}", "debug=tiny",
              "data.val_fraction=0.25", "trainer.max_epochs=2", "callbacks.progress_bar=null"]
    run = tmp_path / "ddp"
    res = run_train(*common, "trainer=ddp_cpu", f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) >= 1
    assert not list(tmp_path.glob("outputs"))  # no second run folder from rank 1
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["val"]["n"] > 0
    # the same checkpoint scored by 1 and by 2 processes: identical test metrics, every image once
    metrics = []
    for name, extra in (("one", []), ("two", ["trainer=ddp_cpu"])):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        out = tmp_path / f"eval_{name}"
        res = subprocess.run([sys.executable, str(PROJECT_ROOT / "eval.py"), f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
                              f"data.root={xray_root}", f"data.cache_dir={tmp_path / 'cache'}", "data.eval_batch_size=5",
                              *extra, f"hydra.run.dir={out}"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        metrics.append(json.loads((out / "metrics.json").read_text()))
        with open(out / "predictions.csv") as f:
            assert len(f.readlines()) == 1 + 32
    assert metrics[0] == pytest.approx(metrics[1], abs=1e-6)
    assert metrics[1]["n"] == 32


def test_submitit_local_launcher_runs_a_sweep(xray_root, tmp_path):
    res = run_train("-m", "launcher=submitit_local", f"data.root={xray_root}", f"data.cache_dir={tmp_path / 'cache'}",
                    "debug=tiny", "trainer.max_epochs=1", "model.depth=2,3", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name[0].isdigit()]
    assert len(jobs) == 2
    assert all((job / "checkpoints" / "best.ckpt").is_file() for job in jobs)
