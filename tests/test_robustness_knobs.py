"""The robustness knobs of issue 15, each off by default: test-time augmentation (models/tta.py,
the Predictor's `tta`), stochastic weight averaging (callbacks=swa), label smoothing and
mixup, and the intensity normalisation of the preprocessing preset (data.normalize)."""

import csv
import json
import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from pneumonia.config.instantiate import instantiate
from pneumonia.data.augment import BatchAugment
from pneumonia.data.cache import cache_key, decode_images
from pneumonia.data.datamodule import ChestXrayDataModule
from pneumonia.data.folder import scan_split
from pneumonia.data.preprocess import Preprocess, equalize
from pneumonia.data.stress import perturb, validation_images
from pneumonia.data.synthetic import _xray
from pneumonia.errors import ConfigError
from pneumonia.evaluation.metrics import report
from pneumonia.inference import Predictor
from pneumonia.models import CustomCNN
from pneumonia.models.classifier import PneumoniaClassifier
from pneumonia.models.tta import TTA
from pneumonia.runners.callbacks import StochasticWeightAveraging
from pneumonia.runners.eval import evaluate
from pneumonia.runners.train import train
from tests.helpers import compose_cfg, train_cfg

NET = {
    "_target_": "pneumonia.models.CustomCNN",
    "depth": 3,
    "widths": [8, 16, 32],
    "in_channels": 1,
    "image_size": 32,
    "dense_units": 16,
    "batch_norm": True,
}


def xrays(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([_xray(rng, (size, size), i % 2 == 1) for i in range(n)])[:, None])


class FakeTrainer:
    training, current_epoch, global_rank, world_size = True, 0, 0, 1


# ---- test-time augmentation ---------------------------------------------------------------
def test_tta_with_one_variant_is_the_network_itself():
    torch.manual_seed(0)
    net = CustomCNN(**{k: v for k, v in NET.items() if k != "_target_"}).eval()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(TTA(net, scales=(1.0,), shifts=(0.0,))(x), net(x))


def test_tta_is_the_mean_probability_over_scaled_and_shifted_copies():
    torch.manual_seed(0)
    net = CustomCNN(**{k: v for k, v in NET.items() if k != "_target_"}).eval()
    tta = TTA(net)
    assert len(tta.variants) == 7 and tta.variants[-1] == (1.0, 0.0, 0.0)  # 3 scales, 4 shifts, identity last
    assert all(scale > 0 for scale, _, _ in tta.variants)  # no flip
    x = xrays(4).float() / 255
    with torch.no_grad():
        out = tta(x)
        members = [torch.sigmoid(net(x if v == (1.0, 0.0, 0.0) else tta._variant(x, *v))) for v in tta.variants]
    assert out.shape == (4,) and torch.allclose(torch.sigmoid(out), torch.stack(members).mean(0), atol=1e-6)
    point = torch.zeros(1, 1, 8, 8)
    point[0, 0, 4, 2] = 1
    assert torch.nonzero(tta._variant(point, 1.0, 0.125, 0.0)[0, 0] > 0.5).tolist() == [[4, 3]]  # 1/8 right
    with pytest.raises(
        ConfigError, match=re.escape("scales=(0.1,) must be a list of numbers >= 0.5 and <= 2.0 (not empty)")
    ):
        TTA(net, scales=(0.1,))


# ---- one run with normalize=standardize and the recipe's TTA --------------------------------
@pytest.fixture(scope="module")
def standardized_tta_run(xray_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("standardize_tta_run")
    train(
        train_cfg(
            xray_root,
            out,
            "trainer.max_epochs=1",
            "logger=none",
            "seed=5",
            "callbacks.early_stopping=null",
            "callbacks.gradcam=null",
            "data.normalize=standardize",
            "data.tta=true",
        )
    )
    return out / "checkpoints" / "best.ckpt"


def test_a_standardize_and_tta_recipe_is_scored_with_both(standardized_tta_run, xray_root, caplog):
    p = Predictor.from_checkpoint(standardized_tta_run)
    assert p.preprocess.normalize == "standardize" and p.tta and isinstance(p.net, TTA)
    assert p.recipe.normalize == "standardize" and p.recipe.tta is True and p.summary()["tta"] is True
    x = p.preprocess(next((xray_root / "test" / "NORMAL").iterdir()))  # a file through the preset
    assert abs(float(x.mean())) < 1e-5 and float(x.std(correction=0)) == pytest.approx(1.0, abs=1e-4)
    # calibration chose the threshold on these very scores: standardised, with TTA
    dm = ChestXrayDataModule(**{**p.data_settings, "bad_image_report": None})
    dm.setup("fit")
    images, labels = validation_images(dm.splits["val"])
    probs = p.predict_images(images)
    stored = p.recipe.val_report
    ours = report(probs, labels, p.threshold)
    assert ours["auroc"] == pytest.approx(stored["auroc"], abs=1e-5)
    assert (ours["tp"], ours["fp"], ours["fn"]) == (stored["tp"], stored["fp"], stored["fn"])
    with caplog.at_level(logging.WARNING, logger="pneumonia.inference.predictor"):
        plain = Predictor.from_checkpoint(standardized_tta_run, tta=False)
    assert not isinstance(plain.net, TTA) and not torch.equal(plain.predict_images(images), probs)
    assert f"tta=false: the stored threshold {p.threshold:.4f} was chosen on validation with TTA on" in caplog.text
    with pytest.raises(ConfigError, match="tta='yes' must be true or false"):
        Predictor.from_checkpoint(standardized_tta_run, tta="yes")
    from pneumonia.explain.gradcam import gradcam  # predict.py explain=true: through the TTA wrapper

    maps, cam_probs = gradcam(p.net, p.preprocess.to_input(images[:3]), threshold=p.threshold)
    assert maps.shape == (3, 48, 48) and torch.allclose(cam_probs, probs[:3], atol=0.02)  # fp32 vs the stored bf16


def test_predict_takes_the_tta_knob_and_onnx_refuses_it(tmp_path):
    from pneumonia.runners.predict import _check

    cfg = compose_cfg("predict", ["backend=onnx", "model_path=model.onnx", "inputs=scans/", "tta=true"], tmp_path)
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "tta=true is for backend=torch: an ONNX model scores as it "
            "was exported (its model.json 'tta'); export the checkpoint "
            "again with export.py tta=true"
        ),
    ):
        _check(cfg)
    assert compose_cfg("predict", ["ckpt_path=x", "inputs=y"], tmp_path).tta is None  # null: as the recipe says


@pytest.mark.slow
def test_export_carries_tta_in_the_graph_and_says_so(standardized_tta_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pneumonia.export.onnx_predictor import OnnxPredictor
    from pneumonia.export.runner import export

    meta = export(compose_cfg("export", [f"ckpt_path={standardized_tta_run}"], tmp_path / "on"))
    assert (
        meta["tta"]["enabled"]
        and meta["tta"]["variants"] == 7
        and "mean probability over 7" in meta["output"]["meaning"]
    )
    card = (tmp_path / "on" / "MODEL_CARD.md").read_text()
    assert "| test-time augmentation | on, inside the model: 7 variants per image" in card
    assert "normalization `standardize` (per image" in card
    assert OnnxPredictor.from_model(tmp_path / "on" / "model.onnx").tta
    off = export(compose_cfg("export", [f"ckpt_path={standardized_tta_run}", "tta=false"], tmp_path / "off"))
    assert off["tta"] == {"enabled": False, "variants": 1} and off["threshold"] == meta["threshold"]
    assert (
        "| test-time augmentation | off: one forward pass per image |"
        in (tmp_path / "off" / "MODEL_CARD.md").read_text()
    )
    assert not OnnxPredictor.from_model(tmp_path / "off" / "model.onnx").tta


def test_eval_tta_changes_scores_not_shapes(standardized_tta_run, xray_root, tmp_path):
    # the recipe has TTA; tta=false on eval.py's command line scores without it
    cfg = compose_cfg(
        "eval",
        [
            f"ckpt_path={standardized_tta_run}",
            "trainer.accelerator=cpu",
            "tta=false",
            f"data.root={xray_root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "intervals.resamples=0",
            "describe=false",
            "gallery_size=0",
        ],
        tmp_path,
    )
    assert evaluate(cfg)["n"] == 32
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    scored = torch.tensor([float(r["probability"]) for r in rows])
    paths = [r["path"] for r in rows]
    with_tta = Predictor.from_checkpoint(standardized_tta_run).predict_files(paths)
    without = Predictor.from_checkpoint(standardized_tta_run, tta=False).predict_files(paths)
    assert with_tta.shape == without.shape == scored.shape == (32,)
    assert torch.allclose(scored, without, atol=1e-5) and not torch.allclose(scored, with_tta, atol=1e-4)


def test_an_older_checkpoint_scores_without_normalisation_or_tta(standardized_tta_run, tmp_path):
    ckpt = torch.load(standardized_tta_run, weights_only=True)
    for key in ("normalize", "tta", "stress"):
        del ckpt["datamodule_hyper_parameters"][key]
    torch.save(ckpt, tmp_path / "old.ckpt")
    p = Predictor.from_checkpoint(tmp_path / "old.ckpt")
    assert p.preprocess.normalize == "none" and not p.tta
    images = xrays(2, 48)
    assert torch.equal(p.preprocess.to_input(images), images.float() / 255)


# ---- stochastic weight averaging (and mixup, end to end) ------------------------------------
@pytest.fixture(scope="module")
def swa_run(xray_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("swa_run")
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("pneumonia.runners.train")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        score, _ = train(
            train_cfg(
                xray_root,
                out,
                "trainer.max_epochs=3",
                "logger=none",
                "seed=6",
                "callbacks=swa",
                "callbacks.swa.swa_epoch_start=2",
                "callbacks.gradcam=null",
                "callbacks.progress_bar=null",
                "data.augment.mixup=0.4",
            )
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return out, score, said[-1]  # the run summary's three lines


def test_swa_run_summary_counts_the_batch_norm_epoch_apart(swa_run):
    how = swa_run[2].splitlines()[0]
    assert how.startswith("Trained 3 epochs (trainer.max_epochs=3) and one more pass over the training images")
    assert how.endswith(" of the averaged weights") and " at epoch " not in how


def test_swa_leaves_the_averaged_weights_in_best_ckpt(swa_run):
    out, score, _ = swa_run
    folder = out / "checkpoints"
    best = torch.load(folder / "best.ckpt", weights_only=True)
    pre = torch.load(folder / "best_pre_swa.ckpt", weights_only=True)
    state = next(v for k, v in best["callbacks"].items() if k.startswith("StochasticWeightAveraging"))
    assert state["n_averaged"] == 3  # after epochs 1, 2 and 3 (swa_epoch_start=2 of 3)
    averaged = state["average_model_state"]
    params = [k for k in best["state_dict"] if k.startswith("net.") and "running_" not in k and "num_batches" not in k]
    assert params and all(torch.equal(best["state_dict"][k], averaged[k]) for k in params)
    assert any(not torch.equal(best["state_dict"][k], pre["state_dict"][k]) for k in params)
    # the batch-norm statistics were recomputed for the averaged weights (one extra epoch), and
    # best.ckpt was validated and calibrated as the averaged model
    # epoch: 0-based, the last one that ran (3 of training + the batch-norm update)
    assert best["epoch"] == 3 and best["pneumonia"]["val_report"]["n"] > 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["best_checkpoint"] == str(folder / "best.ckpt") and summary["best_score"] == pytest.approx(score)
    p = Predictor.from_checkpoint(folder / "best.ckpt")  # weights_only: the callback state is plain
    assert p.threshold == pytest.approx(float(best["state_dict"]["threshold"]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"swa_lrs": 0}, "callbacks.swa.swa_lrs=0 must be a positive number"),
        ({"swa_lrs": "fast"}, "callbacks.swa.swa_lrs='fast' must be a positive number"),
        ({"swa_lrs": 0.001, "swa_epoch_start": 0}, "callbacks.swa.swa_epoch_start=0 must be an epoch"),
        ({"swa_lrs": 0.001, "swa_epoch_start": 1.5}, "callbacks.swa.swa_epoch_start=1.5 must be an epoch"),
        ({"swa_lrs": 0.001, "annealing_epochs": -1}, "callbacks.swa.annealing_epochs=-1 must be an integer >= 0"),
        ({"swa_lrs": 0.001, "annealing_strategy": "step"}, "callbacks.swa.annealing_strategy='step' must be"),
        ({"swa_lrs": 0.001, "device": "gpu9"}, "callbacks.swa.device='gpu9' must be null"),
        ({"swa_lrs": 0.001, "keep_pre_swa": "yes"}, "callbacks.swa.keep_pre_swa='yes' must be true or false"),
    ],
)
def test_bad_swa_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        StochasticWeightAveraging(**kwargs)


# ---- label smoothing and mixup ------------------------------------------------------------
def test_label_smoothing_changes_the_training_loss_as_expected():
    torch.manual_seed(0)
    x, y = torch.rand(6, 1, 32, 32), torch.tensor([0, 1, 1, 0, 1, 0])
    batch = (x, y, torch.arange(6))
    plain = PneumoniaClassifier(NET, pos_weight=2.0, channels_last=False).eval()
    smooth = PneumoniaClassifier(NET, pos_weight=2.0, channels_last=False, label_smoothing=0.2).eval()
    smooth.load_state_dict(plain.state_dict())
    with torch.no_grad():
        logits = plain(x).float()
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        expected = bce(logits, y.float() * 0.8 + 0.1, pos_weight=torch.tensor(2.0))
        assert smooth._step("train", batch)[0] == pytest.approx(float(expected), abs=1e-6)
        unsmoothed = bce(logits, y.float(), pos_weight=torch.tensor(2.0))
        assert plain._step("train", batch)[0] == pytest.approx(float(unsmoothed), abs=1e-6)
        # validation keeps the plain labels: the same loss with and without smoothing
        assert smooth._step("val", batch)[0] == pytest.approx(float(plain._step("val", batch)[0]), abs=1e-6)
    for bad in (1.0, -0.1, "some", True):
        with pytest.raises(ConfigError, match=re.escape(f"label_smoothing={bad!r} must be a number >= 0 and < 1")):
            PneumoniaClassifier(NET, label_smoothing=bad)


def test_mixup_keeps_shapes_and_gives_soft_targets():
    x, labels = xrays(16).float() / 255, torch.tensor([0, 1] * 8)
    mixed, targets = BatchAugment(mixup=0.4).mix(x, labels, torch.Generator().manual_seed(0))
    assert mixed.shape == x.shape and mixed.dtype == x.dtype and targets.shape == (16,)
    assert ((targets >= 0) & (targets <= 1)).all() and ((targets > 0) & (targets < 1)).any()
    assert ((targets - labels).abs() <= 0.5).all()  # each image dominates its mix: its own label is the hard one
    again, same = BatchAugment(mixup=0.4).mix(x, labels, torch.Generator().manual_seed(0))
    assert torch.equal(again, mixed) and torch.equal(same, targets)
    off = BatchAugment(mixup=0.0).mix(x, labels)
    assert off[0] is x and torch.equal(off[1], labels.float())
    with pytest.raises(ConfigError, match=re.escape("mixup=-1 must be a number >= 0")):
        BatchAugment(mixup=-1)


def test_mixup_batches_carry_soft_targets_and_train_metrics_count_hard_labels(xray_root, tmp_path):
    dm = ChestXrayDataModule(
        root=str(xray_root),
        image_size=32,
        batch_size=8,
        val_fraction=0.25,
        cache_dir=str(tmp_path),
        augment={"mixup": 0.4, "hflip": False},
    )
    dm.setup("fit")
    images, labels, idx = next(iter(dm.train_dataloader()))
    dm.trainer = FakeTrainer()
    batch = dm.on_after_batch_transfer((images, labels, idx), 0)
    assert len(batch) == 4 and torch.equal(batch[1], labels) and batch[3].dtype == torch.float32
    module = PneumoniaClassifier(NET, channels_last=False)
    assert torch.equal(module.targets("train", batch), batch[3])
    assert torch.equal(module.targets("val", batch), labels.float())
    module._step("train", batch)
    confmat = module.train_metrics["confmat"].compute()
    assert confmat.sum(1).tolist() == [int((labels == 0).sum()), int((labels == 1).sum())]  # hard labels


# ---- intensity normalisation ----------------------------------------------------------------
def test_standardize_gives_zero_mean_unit_std_and_cancels_contrast():
    images = xrays(6)
    x = Preprocess(32, 1, "standardize").to_input(images)
    assert torch.allclose(x.flatten(1).mean(1), torch.zeros(6), atol=1e-5)
    assert torch.allclose(x.flatten(1).std(1, correction=0), torch.ones(6), atol=1e-4)
    assert torch.equal(Preprocess(32, 1).to_input(images), images.float() / 255)  # none: as before
    flat = Preprocess(32, 1, "standardize").to_input(torch.full((1, 1, 32, 32), 9, dtype=torch.uint8))
    assert torch.equal(flat, torch.zeros_like(flat))


def test_equalize_is_pillows_and_flattens_the_histogram():
    images = xrays(4, 48)
    rgb = torch.cat([images, perturb(images, "gamma_low", 0.7), images // 2], 1)  # 3 different channels
    x = Preprocess(48, 3, "equalize").to_input(rgb)
    for i in range(4):
        for c in range(3):
            pil = np.asarray(ImageOps.equalize(Image.fromarray(rgb[i, c].numpy())))
            assert np.array_equal(pil, (x[i, c] * 255).round().numpy().astype(np.uint8)), (i, c)
    before = np.histogram(images[0].numpy(), bins=8, range=(0, 256))[0]
    after = np.histogram((x[0, 0] * 255).numpy(), bins=8, range=(0, 256))[0]
    assert before.max() > 3 * before.mean() and after.max() < 1.5 * after.mean() and after.min() > 0.5 * after.mean()
    constant = torch.full((1, 1, 8, 8), 0.2)
    assert torch.equal(equalize(constant), (constant * 255).round() / 255)  # nothing to spread


def test_normalize_is_checked_and_every_value_reads_the_same_decoded_cache(xray_root, tmp_path):
    with pytest.raises(
        ConfigError, match="^" + re.escape("normalize='zscore' must be one of none, standardize, equalize")
    ):
        ChestXrayDataModule(root=str(xray_root), normalize="zscore")
    # normalize acts on the float batch, after the cache: the decoded bytes are the same, so the
    # cache is shared (and old caches keep their keys); the network's inputs differ
    files = scan_split(xray_root, "val")
    presets = [Preprocess(32, 1, n) for n in ("none", "standardize", "equalize")]
    assert len({cache_key(files.paths, p) for p in presets}) == 1
    assert cache_key(files.paths, presets[0]) != cache_key(files.paths, Preprocess(40, 1))
    decoded = decode_images(files.paths, files.labels, presets[0], cache_dir=tmp_path)
    inputs = [p.to_input(decoded.images) for p in presets]
    assert not torch.equal(inputs[0], inputs[1]) and not torch.equal(inputs[0], inputs[2])
    assert {"normalize", "normalization"} <= set(presets[1].describe()) and presets[1].describe()[
        "normalize"
    ] == "standardize"


def test_training_batches_are_normalised_after_the_augmentation(xray_root, tmp_path):
    dm = ChestXrayDataModule(
        root=str(xray_root),
        image_size=32,
        batch_size=8,
        val_fraction=0.25,
        cache_dir=str(tmp_path),
        normalize="standardize",
        augment={"brightness": 0.3, "contrast": 0.3, "hflip": False},
    )
    dm.setup("fit")
    images, labels, idx = next(iter(dm.train_dataloader()))
    dm.trainer = FakeTrainer()
    x = dm.on_after_batch_transfer((images, labels, idx), 0)[0]
    assert torch.allclose(x.flatten(1).mean(1), torch.zeros(len(x)), atol=1e-5)
    assert torch.allclose(x.flatten(1).std(1, correction=0), torch.ones(len(x)), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, message",
    [
        (
            "data.normalize=zscore",
            "normalize='zscore' must be one of none, standardize, equalize",
        ),  # the class names its argument; instantiate_setting adds data.
        (
            "data.tta=maybe",
            "tta='maybe' must be true or false",
        ),  # the class names its argument; instantiate_setting adds data.
        ("data.augment.mixup=-0.5", "augment.mixup=-0.5 must be a number >= 0"),
        ("data.augment.hflip=sometimes", "augment.hflip='sometimes' must be true or false"),
        ("data.stress.enabled=often", "data.stress.enabled='often' must be true or false"),
        ("data.stress.perturbations.noise=2", "data.stress.perturbations.noise=2 must be a number in (0, 1]"),
    ],
)
def test_new_data_settings_fail_at_construction_naming_the_key(override, message, xray_root, tmp_path):
    cfg = train_cfg(xray_root, tmp_path, override)
    with pytest.raises(ConfigError, match=re.escape(message)):
        instantiate(cfg.data, _convert_="all")
