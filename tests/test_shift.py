"""The shift shown to users (evaluation/shift.py): the KS test against known values, the
validation scores read back from the stored ROC, the image reference stored by calibration,
and eval.py's shift.json / report section with a warning on a shifted folder only."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from pneumonia.evaluation.shift import (
    ALPHA,
    MIN_EFFECT,
    compare,
    image_reference,
    image_statistics,
    kolmogorov_sf,
    ks_2samp,
    scores_from_roc,
    write_shift,
)
from pneumonia.evaluation.threshold import roc_points
from pneumonia.inference.checkpoint import load_checkpoint, shift_reference
from pneumonia.runners.eval import evaluate
from tests.helpers import compose_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "lam, p", [(0.5, 0.96394524), (1.0, 0.26999967), (1.3581, 0.05), (1.6276, 0.01), (2.0, 0.00067093)]
)
def test_kolmogorov_tail_at_known_values(lam, p):
    # the classic critical values (1.358 at 5%, 1.628 at 1%) and tabulated tail probabilities
    assert kolmogorov_sf(lam) == pytest.approx(p, rel=1e-3, abs=1e-6)
    assert kolmogorov_sf(0.0) == 1.0 and kolmogorov_sf(5.0) < 1e-20


def test_ks_2samp_statistic_exactly_and_p_value_against_a_worked_example():
    # D by hand: a = 1..5, b = 4..8 → F_a(5) = 1, F_b(5) = 0.4: D = 0.6;
    # ne = 2.5, lam = (sqrt(2.5) + 0.12 + 0.11 / sqrt(2.5)) * 0.6 = 1.0617 → Q = 0.2096
    d, p = ks_2samp([1, 2, 3, 4, 5], [4, 5, 6, 7, 8])
    assert d == pytest.approx(0.6) and p == pytest.approx(0.2096, abs=2e-3)
    assert ks_2samp([1, 2, 3], [1, 2, 3]) == (0.0, 1.0)
    # weights: values with counts are the same sample as the values repeated
    assert ks_2samp([0.1, 0.5, 0.9], [0.2, 0.6], weights_a=[2, 1, 3]) == pytest.approx(
        ks_2samp([0.1, 0.1, 0.5, 0.9, 0.9, 0.9], [0.2, 0.6])
    )
    with pytest.raises(ValueError, match="at least one finite value"):
        ks_2samp([], [1.0])


def test_ks_2samp_agrees_with_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n, m, shift in ((30, 40, 0.5), (500, 200, 0.2), (1000, 1000, 0.1)):
        a, b = rng.normal(0, 1, n), rng.normal(shift, 1, m)
        d, p = ks_2samp(a, b)
        ref = stats.ks_2samp(a, b, method="asymp")
        assert d == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, abs=0.01)


def test_validation_scores_are_read_back_from_the_stored_roc():
    rng = np.random.default_rng(1)
    probs = torch.from_numpy(np.round(rng.uniform(0, 1, 60), 2))  # ties on purpose
    labels = torch.from_numpy(rng.integers(0, 2, 60))
    back = scores_from_roc(roc_points(probs, labels))
    values = np.repeat(back["values"], np.asarray(back["counts"], dtype=int))
    assert np.allclose(np.sort(values), np.sort(probs.numpy()))
    normal = np.repeat(back["values"], np.asarray(back["counts_normal"], dtype=int))
    assert np.allclose(np.sort(normal), np.sort(probs.numpy()[labels.numpy() == 0]))
    assert scores_from_roc(None) is None and scores_from_roc({"thresholds": []}) is None


def _images(n, value_shift=0, seed=0, invert=False):
    rng = np.random.default_rng(seed)
    brightness = rng.normal(110 + value_shift, 15, (n, 1, 1, 1))  # images differ in brightness, as X-rays do
    x = np.clip(brightness + rng.normal(0, 25, (n, 1, 24, 24)), 0, 255).astype(np.uint8)
    return 255 - x if invert else x


def test_image_statistics_and_reference():
    x = _images(5)
    x[0] = 0
    stats = image_statistics(x)
    assert stats["dark"][0] == 1.0 and stats["mean"][0] == 0 and stats["histogram"].sum() == x.size
    ref = image_reference(torch.from_numpy(x))
    assert ref["n_images"] == 5 and len(ref["mean"]) == 5 and abs(sum(ref["histogram"]) - 1) < 1e-5
    json.dumps(ref)  # plain types: it goes into a weights_only checkpoint
    with pytest.raises(ValueError, match="uint8"):
        image_statistics(x.astype(np.float32))


def test_compare_warns_on_a_shifted_folder_only(tmp_path):
    rng = np.random.default_rng(2)
    val_probs, val_labels = torch.from_numpy(rng.beta(2, 2, 300)), torch.from_numpy(rng.integers(0, 2, 300))
    roc, ref = roc_points(val_probs, val_labels), image_reference(_images(300))
    same = compare(rng.beta(2, 2, 200), _images(200, seed=1), val_roc=roc, image_ref=ref)
    assert same["available"] and same["images_compared"] and not same["shifted"] and same["warning"] is None
    assert {t["name"] for t in same["tests"]} == {"scores", "mean", "std", "dark"}
    darker = compare(rng.beta(2, 2, 200), _images(200, value_shift=-40, seed=1), val_roc=roc, image_ref=ref)
    assert darker["shifted"] and "mean intensity per image" in darker["warning"] and "\n" not in darker["warning"]
    assert "share of pneumonia" not in darker["warning"]
    shifted = {t["name"]: t for t in darker["tests"]}
    assert shifted["mean"]["p_value"] < ALPHA and shifted["mean"]["statistic"] > MIN_EFFECT
    assert not shifted["scores"]["shifted"]
    # scores alone shifted (no share of these two alike classes explains them): said so
    scores = compare(rng.beta(8, 1, 200), _images(200, seed=1), val_roc=roc, image_ref=ref)
    assert scores["shifted"] and "whatever the share of pneumonia" in scores["warning"]
    # a small, significant difference is not a shift (effect-size bound); neither is a large one in 4 images
    big = compare(
        rng.beta(2, 2, 5000),
        _images(3000, value_shift=3, seed=3),
        val_roc=roc,
        image_ref=image_reference(_images(3000, seed=4)),
    )
    mean_test = {t["name"]: t for t in big["tests"]}["mean"]
    assert mean_test["p_value"] < ALPHA and not mean_test["shifted"]
    few = compare(rng.beta(2, 2, 3), _images(3, value_shift=-20, seed=1), val_roc=roc, image_ref=ref)
    few_mean = {t["name"]: t for t in few["tests"]}["mean"]
    assert few_mean["statistic"] > MIN_EFFECT and few_mean["p_value"] >= ALPHA and not few["shifted"]
    # what an old checkpoint has: scores only, said so
    old = compare(rng.beta(2, 2, 50), _images(50), val_roc=roc, image_ref=None)
    assert [t["name"] for t in old["tests"]] == ["scores"] and "tools.calibrate" in old["note"]
    assert not compare([0.5], None, val_roc=None, image_ref=None)["available"]
    # a damaged reference is left out, said so, never a traceback
    for bad in ({**ref, "mean": 3}, {**ref, "std": ["x"]}, {**ref, "dark": [float("nan")]}, "ref"):
        damaged = compare(rng.beta(2, 2, 50), _images(50), val_roc=roc, image_ref=bad)
        assert [t["name"] for t in damaged["tests"]] == ["scores"] and "not readable" in damaged["note"]
    written = write_shift(tmp_path, rng.beta(2, 2, 50), _images(50), val_roc=roc, image_ref="ref")
    assert (
        written["figure"] == "shift.png"
        and json.loads((tmp_path / "shift.json").read_text())["note"] == written["note"]
    )


def test_a_one_class_folder_is_compared_with_that_class_not_the_pool():
    """The classes differ in their images (here pneumonia images are brighter and score high):
    a folder of normal images alone from the same hospital differs from the pooled reference
    but not from the reference mixed at its scores' share of pneumonia (about 0); a folder of
    normal images that are darker than validation's normal ones is still shifted."""
    rng = np.random.default_rng(7)
    n0, n1 = 300, 300
    images = np.concatenate([_images(n0, seed=1), _images(n1, value_shift=40, seed=2)])
    labels = np.array([0] * n0 + [1] * n1)
    probs = np.concatenate([rng.beta(2, 8, n0), rng.beta(8, 2, n1)])
    roc = roc_points(torch.from_numpy(probs).float(), torch.from_numpy(labels))
    pooled, by_class = image_reference(images), image_reference(torch.from_numpy(images), torch.from_numpy(labels))
    assert by_class["by_class"]["normal"]["n_images"] == n0 and "by_class" not in pooled
    json.dumps(by_class)

    folder, folder_probs = _images(200, seed=3), rng.beta(2, 8, 200)
    old = compare(folder_probs, folder, val_roc=roc, image_ref=pooled)
    assert old["shifted"] and {t["name"] for t in old["tests"] if t["shifted"]} == {"mean"}  # the pooled false alarm
    new = compare(folder_probs, folder, val_roc=roc, image_ref=by_class)
    assert not new["shifted"], new["tests"]
    assert {t["name"]: t for t in new["tests"]}["scores"]["pneumonia_share"] < 0.1
    darker = compare(folder_probs, _images(200, value_shift=-40, seed=3), val_roc=roc, image_ref=by_class)
    assert darker["shifted"] and "mean intensity per image" in darker["warning"]
    # a damaged per-class part falls back to the pooled reference, it does not fail
    damaged = {**by_class, "by_class": {"normal": {"mean": ["x"]}}}
    assert compare(folder_probs, folder, val_roc=roc, image_ref=damaged)["shifted"]


def _inverted_tree(root, out):
    """The test split of `root` with every image's gray values inverted (another scanner's
    photometric interpretation)."""
    for path in (root / "test").rglob("*"):
        if path.is_file():
            target = out / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as img:
                ImageOps.invert(img.convert("L")).save(target.with_suffix(".png"))
    return out


@pytest.mark.slow
def test_calibration_stores_the_reference_and_eval_warns_on_a_shifted_folder_only(
    tiny_checkpoint, xray_root, tmp_path, capsys
):
    ref = shift_reference(load_checkpoint(tiny_checkpoint))
    assert ref is not None and ref["source"] == "validation split" and ref["n_images"] == len(ref["mean"]) > 0

    def run(root, name):
        out = tmp_path / name
        evaluate(
            compose_cfg(
                "eval",
                [
                    f"ckpt_path={tiny_checkpoint}",
                    "trainer.accelerator=cpu",
                    f"data.root={root}",
                    f"data.cache_dir={tmp_path / 'cache'}",
                    "logger=none",
                    "gallery_size=0",
                    "describe=false",
                    "intervals.resamples=50",
                    "trainer.enable_progress_bar=false",
                ],
                out,
            )
        )
        return out, json.loads((out / "shift.json").read_text()), capsys.readouterr().out

    out, same, printed = run(xray_root, "same")
    assert same["available"] and same["images_compared"] and not same["shifted"] and "warning:" not in printed
    assert {t["name"] for t in same["by_class"]} == {"scores_normal", "scores_pneumonia"}
    html = (out / "report.html").read_text()
    assert 'id="shift"' in html and "No shift found" in html and (out / "shift.png").is_file()

    assert same["caveat"] is None

    out, inverted, printed = run(_inverted_tree(xray_root, tmp_path / "inverted"), "inverted")
    assert inverted["shifted"] and inverted["warning"].startswith("warning: these 32 images do not look like")
    assert {t["name"]: t for t in inverted["tests"]}["mean"]["shifted"]
    assert inverted["warning"] in printed
    assert 'class="warn">warning: these 32 images' in (out / "report.html").read_text()


def test_an_old_checkpoint_without_the_reference_compares_scores_only(tiny_checkpoint, xray_root, tmp_path):
    ckpt = dict(torch.load(tiny_checkpoint, weights_only=True))
    ckpt["pneumonia"] = {k: v for k, v in ckpt["pneumonia"].items() if k != "shift_reference"}
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)  # the weights are unchanged: the digest still holds
    out = tmp_path / "eval"
    evaluate(
        compose_cfg(
            "eval",
            [
                f"ckpt_path={old}",
                "trainer.accelerator=cpu",
                f"data.root={xray_root}",
                f"data.cache_dir={tmp_path / 'cache'}",
                "logger=none",
                "gallery_size=0",
                "describe=false",
                "intervals.resamples=50",
                "trainer.enable_progress_bar=false",
            ],
            out,
        )
    )
    res = json.loads((out / "shift.json").read_text())
    assert [t["name"] for t in res["tests"]] == ["scores"] and "tools.calibrate" in res["note"]
    assert "tools.calibrate" in (out / "report.html").read_text()
    shutil.rmtree(out)
    # what the note advises: calibrating again stores the images' reference
    from pneumonia.runners.calibration import recalibrate

    recalibrate(old, accelerator="cpu")
    again = shift_reference(load_checkpoint(old))
    assert again == shift_reference(load_checkpoint(tiny_checkpoint))  # the same validation images


@pytest.mark.slow
def test_predict_reports_the_shift_in_its_summary_and_warns_on_a_shifted_folder_only(
    tiny_checkpoint, xray_root, tmp_path, capsys
):
    from pneumonia.runners.predict import predict

    def run(folder, name):
        out = tmp_path / name
        summary = predict(
            compose_cfg(
                "predict", [f"ckpt_path={tiny_checkpoint}", f"inputs={folder}", "device=cpu", "batch_size=5"], out
            )
        )  # several batches: statistics gathered
        return out, summary, capsys.readouterr().out

    out, summary, printed = run(xray_root / "test", "same")
    shift = summary["shift"]
    assert shift["available"] and not shift["shifted"] and shift["warning"] is None and "warning:" not in printed
    assert {t["name"] for t in shift["tests"]} == {"scores", "mean", "std", "dark"}
    assert {t["n"] for t in shift["tests"]} == {32}
    assert json.loads((out / "summary.json").read_text())["shift"] == shift and (out / "shift.png").is_file()
    assert shift["caveat"] is None

    out, summary, printed = run(_inverted_tree(xray_root, tmp_path / "inverted") / "test", "inverted")
    assert summary["shift"]["shifted"] and summary["shift"]["warning"] in printed
    assert [line for line in printed.splitlines() if line.startswith("warning:")] == [summary["shift"]["warning"]]


def test_scoring_caveat_names_what_differs_from_validation():
    from pneumonia.evaluation.shift import scoring_caveat

    assert scoring_caveat(tta=True, stored_tta=True, temperature=1.0, stored_temperature=1.0) is None
    text = scoring_caveat(tta=False, stored_tta=True, temperature=2.0, stored_temperature=1.0)
    assert "TTA off here, on on validation" in text and "temperature 2 here, 1 on validation" in text


def test_a_folder_of_one_class_is_not_a_shift_but_unexplained_scores_are():
    """The score test fits the share of pneumonia: a folder of pneumonia images alone (the
    README's predict example) scores high without any change of hospital."""
    from pneumonia.evaluation.shift import mixture_ks

    rng = np.random.default_rng(5)
    labels = torch.from_numpy(np.r_[np.zeros(250, dtype=np.int64), np.ones(250, dtype=np.int64)])
    probs = torch.from_numpy(np.r_[rng.beta(2, 9, 250), rng.beta(9, 2, 250)])
    roc, ref = roc_points(probs, labels), image_reference(_images(500))
    only_pneumonia = compare(rng.beta(9, 2, 150), _images(150, seed=6), val_roc=roc, image_ref=ref)
    test = {t["name"]: t for t in only_pneumonia["tests"]}["scores"]
    assert not only_pneumonia["shifted"] and test["pneumonia_share"] > 0.9
    only_normal = compare(rng.beta(2, 9, 150), _images(150, seed=6), val_roc=roc, image_ref=ref)
    assert (
        not only_normal["shifted"] and {t["name"]: t for t in only_normal["tests"]}["scores"]["pneumonia_share"] < 0.1
    )
    # against the pooled validation scores the pneumonia-only folder would differ a lot
    pooled_d, pooled_p = ks_2samp(probs.numpy(), rng.beta(9, 2, 150))
    assert pooled_d > 0.4 and pooled_p < 1e-6
    # scores no share explains: everything near 0.5, where validation has few images of either class
    unsure = compare(rng.beta(40, 40, 150), _images(150, seed=6), val_roc=roc, image_ref=ref)
    assert unsure["shifted"] and "whatever the share of pneumonia" in unsure["warning"]
    d, p, pi = mixture_ks(np.array([0.1, 0.9]), np.array([1.0, 0.0]), np.array([0.0, 1.0]), [0.9] * 10)
    assert d == pytest.approx(0.0) and pi == pytest.approx(1.0)
    with pytest.raises(ValueError, match="both classes"):
        mixture_ks(np.array([0.1]), np.array([1.0]), np.array([0.0]), [0.5])
