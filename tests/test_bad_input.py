"""Bad input gets one clear line or a reported skip: bad files, bad config values, foreign
checkpoints, a wrong data root."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia.runners.checks import check_train_config
from pneumonia.data.datamodule import ChestXrayDataModule
from pneumonia.data.folder import DataLayoutError
from pneumonia.errors import CheckpointError, ConfigError
from pneumonia.inference import Predictor
from pneumonia.inference.checkpoint import load_checkpoint
from pneumonia.runners.train import train
from tests.helpers import run_cli, train_cfg
from pneumonia.data.synthetic import make_chest_xray_tree


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
    dm = ChestXrayDataModule(
        root=str(root), image_size=32, val_fraction=0.25, cache_dir=None, bad_image_report=str(report)
    )
    dm.setup("fit")
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 43  # 40 + 3 odd modes, 2 bad skipped
    lines = report.read_text().splitlines()
    assert len(lines) == 2 and {Path(ln.split("\t")[0]).name for ln in lines} == {
        "IM-9001-0001.jpeg",
        "IM-9002-0001.jpeg",
    }
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


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.depth=abc", "model.depth"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        (
            "data.image_size=40;model.depth=5;model.widths=[8,8,8,8,8]",
            "model.depth=5 is too deep for image_size=40",
        ),
        ("optimizer.lr=fast", "optimizer.lr"),
        ("module.pos_weight=-1", "module.pos_weight"),
    ],
)
def test_bad_config_values_are_rejected_naming_the_key(override, key, xray_root, tmp_path):
    cfg = train_cfg(xray_root, tmp_path, *override.split(";"))
    with pytest.raises(ConfigError, match=key):
        check_train_config(cfg)


def test_unknown_key_and_wrong_type_fail_at_startup_with_one_message(tmp_path):
    res = run_cli("train.py", "model.dept=4", f"hydra.run.dir={tmp_path / 'a'}")
    assert res.returncode != 0 and "model.dept" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("train.py", "model.depth=abc", f"hydra.run.dir={tmp_path / 'b'}")
    assert (
        res.returncode == 2
        and res.stderr.strip().splitlines()[-1] == "error: model.depth='abc' must be an integer >= 1"
    )


def test_checkpoint_that_names_foreign_code_is_refused(xray_root, tmp_path):
    cfg = train_cfg(xray_root, tmp_path, "trainer.max_epochs=1", "logger=none")
    train(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["net"]["_target_"] = "os.system"
    torch.save(ckpt, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="not a model of this project"):
        Predictor.from_checkpoint(tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="not a checkpoint written by this project"):
        torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
        load_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(tmp_path)


def test_cli_bad_data_root_is_one_line_error(tmp_path):
    res = run_cli("train.py", f"data.root={tmp_path / 'missing'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: data.root")
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()  # a failed run leaves no empty folder behind


def test_a_refused_first_command_leaves_no_empty_outputs_tree(tmp_path):
    """In a fresh folder, the default run folder outputs/<task>/<time>/ and the outputs/ and
    outputs/<task>/ folders Hydra made for it all go; a folder that holds something stays."""
    res = run_cli("train.py", f"data.root={tmp_path / 'missing'}", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: data.root")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "outputs" / "train" / "kept").mkdir(parents=True)
    assert run_cli("train.py", f"data.root={tmp_path / 'missing'}", cwd=tmp_path).returncode == 2
    assert [p.name for p in (tmp_path / "outputs" / "train").iterdir()] == ["kept"]


def test_only_folders_with_nothing_but_hydra_files_count_as_empty(tmp_path):
    from pneumonia.config.entry import is_empty_run

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("a: 1")
    (tmp_path / "train.log").write_text("")
    (tmp_path / "tensorboard").mkdir()
    assert is_empty_run(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")  # e.g. a resumed run that failed: kept
    assert not is_empty_run(tmp_path)


@pytest.mark.slow
def test_eval_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "model.ckpt"
    bogus.write_bytes(b"not a checkpoint")
    res = run_cli("eval.py", f"ckpt_path={bogus}", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2 and "is not a readable checkpoint" in res.stderr
    assert "Traceback" not in res.stderr and "weights_only` set to `False" not in res.stderr  # no unsafe advice
    res = run_cli("eval.py", f"hydra.run.dir={tmp_path / 'run2'}")
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: ckpt_path is required")


def test_eval_threshold_out_of_range_stops_before_scoring(tmp_path, tiny_checkpoint, xray_root):
    res = run_cli(
        "eval.py",
        f"ckpt_path={tiny_checkpoint}",
        f"data.root={xray_root}",
        "threshold=1.5",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (
        res.stderr.strip().splitlines()[-1]
        == "error: threshold=1.5 must be a number in [0, 1] (or null: the stored one)"
    )
    assert not (tmp_path / "run" / "metrics.json").exists()
