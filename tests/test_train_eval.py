"""train → checkpoint → eval end to end on synthetic data, a multirun, and the CLI."""

import csv
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pneumonia.evaluation import REPORT_KEYS
from pneumonia.hardware import auto_precision
from pneumonia.inference import resolve_precision
from pneumonia.inference.checkpoint import load_checkpoint
from pneumonia.runners.eval import evaluate
from pneumonia.runners.train import train
from tests.helpers import SHARED_DATA, compose_cfg, run_cli, train_cfg


def tb_tags(folder: Path) -> dict:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc.Tags()


@pytest.fixture(scope="module")
def trained(xray_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_run")
    cfg = train_cfg(
        xray_root,
        out,
        "trainer.max_epochs=8",
        "logger=tensorboard_csv",
        "seed=3",
        "callbacks.early_stopping=null",
        "test=true",
    )
    score, val_report = train(cfg)
    return out, score, val_report


def test_training_writes_checkpoints_summary_and_learns(trained):
    out, score, val_report = trained
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["monitor"] == "val/auroc" and summary["best_score"] == pytest.approx(score)
    assert score > 0.8, f"val AUROC {score} on an easy synthetic task"
    assert val_report["accuracy"] > 0.7
    val = json.loads((out / "val_metrics.json").read_text())
    lo, hi = val["at_threshold"]["ci95"]["auroc"]  # bootstrap intervals by patient
    assert lo <= val_report["auroc"] <= hi and val["bootstrap"]["unit"] == "patient"
    assert val["calibration"]["bins"] == 15 and val["calibration"]["temperature"] is None  # off by default
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)  # plain types only
    assert float(ckpt["state_dict"]["threshold"]) == pytest.approx(val_report["threshold"])
    assert ckpt["hyper_parameters"]["net"]["depth"] == 3


@pytest.mark.slow
def test_tensorboard_has_epoch_metrics_figures_and_hparams(trained):
    out, _, _ = trained
    tags = tb_tags(out / "tensorboard")
    scalars = set(tags["scalars"])
    for phase in ("train", "val"):
        for name in ("loss", "accuracy", "precision", "recall", "specificity", "f1", "auroc"):
            assert f"{phase}/{name}" in scalars
    assert "val/confusion_matrix" in tags["images"]
    assert "val/gradcam" in tags["images"]  # Grad-CAM overlays of fixed validation images
    acc_images = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    acc_images.Reload()
    assert len(acc_images.Images("val/gradcam")) == 8  # one gallery per epoch
    assert {"hp/val_f1", "hp/val_auroc", "hp/val_accuracy"} <= scalars
    assert "val/metrics/text_summary" in tags["tensors"]  # the validation table with its intervals
    assert "test/auroc" in scalars  # test=true scores test/ with the best checkpoint
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert len(acc.Scalars("val/f1")) == 8  # once per epoch, not per step
    with open(out / "csv" / "metrics.csv") as f:
        assert "val/auroc" in f.readline()


@pytest.mark.slow
def test_eval_writes_metrics_predictions_and_figures(trained, xray_root, tmp_path):
    out, _, val_report = trained
    cfg = compose_cfg(
        "eval",
        [
            f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}",
            "trainer.accelerator=cpu",
            f"data.root={xray_root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path,
    )
    rep = evaluate(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics)[: len(REPORT_KEYS)] == list(REPORT_KEYS)  # then ci95, calibration, ... (test_report.py)
    assert set(metrics["ci95"]) == {"accuracy", "precision", "recall", "specificity", "f1", "auroc"}
    assert metrics["n"] == 32 and metrics["tn"] + metrics["fp"] + metrics["fn"] + metrics["tp"] == 32
    assert metrics["threshold"] == pytest.approx(val_report["threshold"])
    assert metrics["accuracy"] > 0.7 and metrics["auroc"] > 0.8  # better than chance (0.5)
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 32 and {r["label"] for r in rows} == {"0", "1"}
    assert all(Path(r["path"]).is_file() for r in rows)
    correct = sum(int(r["prediction"]) == int(r["label"]) for r in rows)
    assert correct / 32 == pytest.approx(metrics["accuracy"])
    for png in ("confusion_matrix", "roc_curve", "pr_curve", "reliability_diagram"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert "test/auroc" in tb_tags(tmp_path / "tensorboard")["scalars"]
    assert rep == metrics
    assert (tmp_path / "errors_gallery.png").is_file() == (metrics["fp"] + metrics["fn"] > 0)
    # threshold 0 calls all 16 normal test images pneumonia: the gallery shows the 8 most confident
    cfg = compose_cfg(
        "eval",
        [
            f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}",
            "trainer.accelerator=cpu",
            f"data.root={xray_root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "threshold=0.0",
            "logger=none",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path / "all_pneumonia",
    )
    assert evaluate(cfg)["fp"] == 16
    from PIL import Image

    with Image.open(tmp_path / "all_pneumonia" / "errors_gallery.png") as img:
        assert img.size == (4 * 240, 2 * 280)  # 8 thumbnails, 4 per row


@pytest.mark.slow
def test_multirun_two_jobs_with_readable_folders(xray_root, tmp_path):
    res = run_cli(
        "train.py",
        "-m",
        f"data.root={xray_root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "debug=tiny",
        "trainer.max_epochs=1",
        "model.depth=2,3",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2 and jobs[0].startswith("0_") and "model.depth=2" in jobs[0]
    for job in jobs:
        assert (tmp_path / "sweep" / job / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data/chest_xray is not here")
def test_short_run_on_the_real_images(tmp_path):
    cfg = train_cfg(
        SHARED_DATA,
        tmp_path,
        "data.image_size=64",
        "trainer.max_epochs=1",
        "data.val_fraction=0.1",
        "data.batch_size=32",
        "logger=none",
    )
    score, val_report = train(cfg)
    # the patient-grouped 10% validation split of 5216 images: 526 of them, both classes
    assert val_report["n"] == 526 and val_report["tn"] + val_report["fp"] == 135
    # one epoch of the tiny CNN already ranks the real images well above chance (0.5)
    assert score == pytest.approx(val_report["auroc"]) and score > 0.9


def test_eval_scores_under_the_precision_the_threshold_was_chosen_under(trained):
    out, _, _ = trained
    ckpt = load_checkpoint(out / "checkpoints" / "best.ckpt")
    assert ckpt["pneumonia"]["precision"] == auto_precision("cpu")  # what TINY trained and calibrated under
    assert resolve_precision(None, "bf16-mixed", "cpu") == "bf16-mixed"
    assert resolve_precision("16-mixed", "bf16-mixed", "cpu") == "16-mixed"  # an override wins
    assert resolve_precision(None, None, "cpu") == auto_precision("cpu")  # a checkpoint from before this key


def test_a_run_builds_its_module_once_and_balances_pos_weight_after_setup(tmp_path, monkeypatch):
    """check_train_config's module is the one trained (one net built for training, with its
    pretrained weights: not a resumed run); `module.pos_weight=balanced` is counted from the training split
    once it is set up and saved as that number, in the hyperparameters and the buffer."""
    import pneumonia.models.classifier as classifier
    from pneumonia.data.synthetic import make_chest_xray_tree

    root = make_chest_xray_tree(tmp_path / "data", {"train": (36, 12), "val": (4, 4), "test": (4, 4)})
    builds: list[bool] = []
    real = classifier.build_net
    monkeypatch.setattr(
        classifier,
        "build_net",
        lambda spec, *, pretrained=True: builds.append(pretrained) or real(spec, pretrained=pretrained),
    )
    out = tmp_path / "run"
    train(train_cfg(root, out, "trainer.max_epochs=1", "logger=none", "module.pos_weight=balanced"))
    # one module built to train; the later ones load a checkpoint (calibration, test): no pretrained weights
    assert builds[0] is True and builds[1:] and not any(builds[1:])
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    pos_weight = ckpt["hyper_parameters"]["pos_weight"]
    assert isinstance(pos_weight, float) and pos_weight > 1.5  # about 3 normal per pneumonia image
    assert float(ckpt["state_dict"]["pos_weight"]) == pytest.approx(pos_weight)
