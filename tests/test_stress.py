"""Stress validation (data/stress.py, evaluation/stress.py, tools/stress.py): the validation
images under acquisition changes, deterministic, built from the decoded images the DataModule
holds, logged as val_stress/* during training, and scored for a checkpoint by `stress_metrics`."""

import csv
import json
import re
import shutil

import numpy as np
import pytest
import torch

from pneumonia.data.datamodule import ChestXrayDataModule
from pneumonia.data.stress import (
    DEFAULT_PERTURBATIONS,
    PERTURBATION_SETS,
    StressSettings,
    perturb,
    validation_images,
)
from pneumonia.data.synthetic import _xray
from pneumonia.errors import ConfigError
from pneumonia.evaluation.stress import stress_metrics
from pneumonia.inference import Predictor
from pneumonia.runners.train import train
from pneumonia.tools.stress import main
from tests.helpers import train_cfg


def xrays(n: int = 6, size: int = 40, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([_xray(rng, (size, size), i % 2 == 1) for i in range(n)])[:, None])


def neighbour_difference(images: torch.Tensor) -> float:
    x = images.float()
    return float((x[..., 1:] - x[..., :-1]).abs().mean())


def test_every_perturbation_is_deterministic_and_changes_the_images():
    images = xrays()
    for name, strength in DEFAULT_PERTURBATIONS.items():
        out = perturb(images, name, strength, seed=0)
        assert out.dtype == torch.uint8 and out.shape == images.shape, name
        assert torch.equal(out, perturb(images, name, strength, seed=0)), name  # every epoch, every run
        assert (out.float() - images.float()).abs().mean() > 0.5, name  # actually perturbed
    # the seed only matters where something is drawn; chunking never does
    assert not torch.equal(perturb(images, "noise", 0.03, seed=0), perturb(images, "noise", 0.03, seed=1))
    assert not torch.equal(perturb(images, "crop", 0.9, seed=0), perturb(images, "crop", 0.9, seed=1))
    assert torch.equal(perturb(images, "gamma_low", 0.7, seed=0), perturb(images, "gamma_low", 0.7, seed=5))
    assert torch.equal(perturb(images, "noise", 0.03, chunk=4), perturb(images, "noise", 0.03))
    rgb = images.repeat(1, 3, 1, 1)
    for name in ("jpeg", "blur", "crop"):
        assert perturb(rgb, name, DEFAULT_PERTURBATIONS[name]).shape == rgb.shape


def test_perturbations_do_what_their_names_say():
    images = xrays()
    mean, std = images.float().mean(), images.float().flatten(1).std(1).mean()
    assert perturb(images, "gamma_low", 0.7).float().mean() > mean > perturb(images, "gamma_high", 1.4).float().mean()
    assert (
        perturb(images, "contrast_low", 0.7).float().flatten(1).std(1).mean()
        < std
        < perturb(images, "contrast_high", 1.3).float().flatten(1).std(1).mean()
    )
    sharpness = neighbour_difference(images)
    assert neighbour_difference(perturb(images, "blur", 1.0)) < 0.8 * sharpness
    assert neighbour_difference(perturb(images, "resolution", 0.5)) < 0.8 * sharpness
    assert neighbour_difference(perturb(images, "noise", 0.03)) > sharpness
    # a crop is a part of the image, enlarged back to the full size: along a ramp, the
    # values stay in order and span about the crop's share of the range
    ramp = (torch.arange(40) * 6).to(torch.uint8).expand(2, 1, 40, 40).contiguous()
    cropped = perturb(ramp, "crop", 0.5).float()
    assert (cropped[..., 1:] >= cropped[..., :-1]).all()
    span = cropped[..., -1] - cropped[..., 0]
    assert ((span > 0.4 * 234) & (span < 0.6 * 234)).all()


@pytest.mark.parametrize(
    "stress, message",
    [
        ({"enabled": "yes"}, "data.stress.enabled='yes' must be true or false"),
        ({"seed": -1}, "data.stress.seed=-1 must be an integer >= 0"),
        ({"perturbations": {"gamma_low": 0}}, "data.stress.perturbations.gamma_low=0 must be a number in (0, 10]"),
        ({"perturbations": {"jpeg": 30.5}}, "data.stress.perturbations.jpeg=30.5 must be an integer in [1, 100]"),
        ({"perturbations": {"resolution": "half"}}, "data.stress.perturbations.resolution='half' must be"),
        ({"perturbations": {"sharpen": 1.0}}, "data.stress.perturbations.sharpen: a perturbation's name starts with"),
        ({"perturbations": 3}, "data.stress.perturbations=3 must be a mapping"),
        ({"enabled": True, "perturbations": {"blur": None}}, "needs at least one perturbation"),
        ({"every_n_epochs": 2}, "data.stress.every_n_epochs is not a setting"),
        ("yes", "stress='yes' must be a mapping"),  # the DataModule's signature: the bare argument
    ],
)
def test_bad_stress_settings_are_one_line_errors_at_construction(stress, message, xray_root):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ChestXrayDataModule(root=str(xray_root), stress=stress)


def test_settings_keep_their_order_and_drop_nulls():
    settings = StressSettings.from_config(
        {"enabled": True, "perturbations": {"jpeg": 50, "blur": None, "gamma_x": 2.0}}
    )
    assert settings.perturbations == (("jpeg", 50), ("gamma_x", 2.0)) and settings.names == ("jpeg", "gamma_x")
    assert not StressSettings.from_config(None).enabled and StressSettings().names == tuple(DEFAULT_PERTURBATIONS)


def test_stress_loader_serves_the_held_validation_images_perturbed(xray_root, tmp_path, monkeypatch):
    chosen = {"gamma_low": 0.7, "jpeg": 30, "crop": 0.9}
    dm = ChestXrayDataModule(
        root=str(xray_root),
        image_size=32,
        eval_batch_size=7,
        val_fraction=0.25,
        cache_dir=str(tmp_path),
        stress={"enabled": True, "seed": 3, "perturbations": chosen},
    )
    dm.setup("fit")

    def no_decoding(*args, **kwargs):
        raise AssertionError("the stress set must not decode files again")

    monkeypatch.setattr("pneumonia.data.preprocess.Preprocess.load", no_decoding)
    plain, stress = dm.val_dataloader()
    n = len(dm.splits["val"])
    batches = list(stress)
    images, labels, indices, group = (torch.cat(t) for t in zip(*batches))
    assert len(images) == 3 * n and group.tolist() == [0] * n + [1] * n + [2] * n
    val_images, val_labels = validation_images(dm.splits["val"])
    for g, (name, strength) in enumerate(chosen.items()):
        assert torch.equal(images[g * n : (g + 1) * n], perturb(val_images, name, strength, seed=3)), name
    assert torch.equal(labels, val_labels.repeat(3)) and torch.equal(indices, torch.arange(3 * n))
    assert dm.val_dataloader()[1].dataset is stress.dataset  # built once
    x, y, i, g = dm.on_after_batch_transfer(batches[0], 1)  # the float step keeps the perturbation index
    assert x.dtype == torch.float32 and torch.equal(g, batches[0][3])
    # off (the default): one validation loader, as before
    off = ChestXrayDataModule(root=str(xray_root), image_size=32, val_fraction=0.25, cache_dir=str(tmp_path))
    off.setup("fit")
    assert isinstance(off.val_dataloader(), torch.utils.data.DataLoader) and off.stress_set() is None


@pytest.fixture(scope="module")
def stress_run(xray_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("stress_run")
    score, _ = train(
        train_cfg(
            xray_root,
            out,
            "trainer.max_epochs=1",
            "logger=csv",
            "seed=4",
            "callbacks.early_stopping=null",
            "callbacks.gradcam=null",
            "data.stress.enabled=true",
        )
    )
    return out, score


def test_training_logs_val_stress_beside_val_and_keeps_the_monitor(stress_run):
    out, score = stress_run
    with open(out / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    expected = {f"val_stress/{m}" for m in ("auroc", "accuracy", "precision", "recall", "specificity", "f1")}
    expected |= {f"val_stress/{name}/auroc" for name in DEFAULT_PERTURBATIONS}
    assert expected <= columns and not any("dataloader_idx" in c for c in columns)
    val_rows = [r for r in rows if r.get("val/auroc")]
    assert len(val_rows) == 1 and all(r["val_stress/auroc"] and r["val_stress/jpeg/auroc"] for r in val_rows)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["monitor"] == "val/auroc"
    assert score == pytest.approx(max(float(r["val/auroc"]) for r in val_rows))  # chosen on plain validation


def test_stress_metrics_scores_a_checkpoint_at_its_threshold(stress_run, capsys):
    out, _ = stress_run
    predictor = Predictor.from_checkpoint(out / "checkpoints" / "best.ckpt")
    dm = ChestXrayDataModule(**{**predictor.data_settings, "bad_image_report": None})
    dm.setup("fit")
    images, labels = validation_images(dm.splits["val"])
    res = stress_metrics(predictor, images, labels, None)
    assert res["threshold"] == pytest.approx(predictor.threshold)
    assert res["stress"]["n"] == len(DEFAULT_PERTURBATIONS) * len(labels)
    assert list(res["per_perturbation"]) == list(DEFAULT_PERTURBATIONS)
    assert all(r["n"] == len(labels) for r in res["per_perturbation"].values())
    stored = predictor.recipe.val_report  # calibration's validation report: the same images, plain
    assert res["plain"]["auroc"] == pytest.approx(stored["auroc"], abs=1e-4)
    assert res["plain"]["tp"] + res["plain"]["fn"] == stored["tp"] + stored["fn"]
    strict = stress_metrics(predictor, images, labels, 1.0, perturbations={"noise": 0.05})
    assert strict["stress"]["specificity"] == 1.0 and list(strict["per_perturbation"]) == ["noise"]

    main([str(out), "--json", str(out / "stress.json")])
    printed = capsys.readouterr().out
    assert "stress (pooled)" in printed and "jpeg" in printed and "worst case" in printed
    assert "marker" not in printed  # the standard set unless --set says otherwise
    stored_res = json.loads((out / "stress.json").read_text())[str(out / "checkpoints" / "best.ckpt")]
    assert stored_res["worst"]["auroc"] == min(m["auroc"] for m in res["per_perturbation"].values())
    assert (
        json.loads((out / "stress.json").read_text())[str(out / "checkpoints" / "best.ckpt")]["stress"]["n"]
        == res["stress"]["n"]
    )
    assert "images, TTA off\n" in printed
    main([str(out / "checkpoints" / "best.ckpt"), "--tta", "on", "--perturbations", "noise=0.06,jpeg=15"])
    printed = capsys.readouterr().out
    assert "noise" in printed and "images, TTA on\n" in printed
    # every perturbation, two checkpoints: each with its worst case, then ranked by it
    shutil.copy(out / "checkpoints" / "best.ckpt", out / "copy.ckpt")
    main([str(out), str(out / "copy.ckpt"), "--set", "all", "--json", str(out / "all.json")])
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("marker", "costophrenic", "composed", "gamma_low"))
    assert (
        "Ranked by the worst-case AUROC" in printed and "  1. worst AUROC" in printed and "  2. worst AUROC" in printed
    )
    worst = json.loads((out / "all.json").read_text())[str(out / "checkpoints" / "best.ckpt")]["worst"]
    assert worst["auroc_perturbation"] in PERTURBATION_SETS["all"]

    def refused(*args: str) -> str:
        with pytest.raises(SystemExit) as stop:
            main([*args])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and err.startswith("error: ") and "\n" not in err
        return err

    assert "noise=2 must be a number in" in refused(str(out), "--perturbations", "noise=2")
    assert "does not exist" in refused(str(out / "nope.ckpt"))
    moved = dict(torch.load(out / "checkpoints" / "best.ckpt", weights_only=True))
    moved["datamodule_hyper_parameters"] = {**moved["datamodule_hyper_parameters"], "root": "data/elsewhere"}
    torch.save(moved, out / "moved.ckpt")
    assert "give --data-root" in refused(str(out / "moved.ckpt"))
