"""The threshold rules of `evaluation.threshold` on synthetic scores, and the machinery of the
threshold study (`evaluation.threshold_study`, `tools.threshold_study`): bootstrap, split-halves, tables, the CLI."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from pneumonia.errors import ConfigError
from pneumonia.evaluation import threshold_study as ts
from pneumonia.tools import threshold_study as study_tool
from pneumonia.evaluation.calibration import check_settings
from pneumonia.evaluation.threshold import (
    DEFAULTS,
    METHODS,
    binormal_cut,
    check_threshold_settings,
    choose_threshold,
    empirical_thresholds,
    kernel_cut,
    platt_cut,
    rule_options,
)

SMOOTH = ("youden_bootstrap", "binormal", "kernel", "platt", "midpoint")


def sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, dtype=np.float64)))


def gaussian_scores(n0=400, n1=900, m0=-3.0, s0=1.5, m1=2.0, s1=2.5, seed=0):
    rng = np.random.default_rng(seed)
    z = np.concatenate([rng.normal(m0, s0, n0), rng.normal(m1, s1, n1)])
    y = np.concatenate([np.zeros(n0, dtype=np.int64), np.ones(n1, dtype=np.int64)])
    return z, y


def true_binormal_optimum(m0, s0, m1, s1):
    """Youden's optimum of two normals by brute force on a fine grid (independent of the code)."""
    t = np.linspace(min(m0, m1) - 5, max(m0, m1) + 5, 200_001)
    phi = np.vectorize(lambda x: 0.5 * math.erfc(-x / math.sqrt(2)))
    return float(t[np.argmax(phi((t - m0) / s0) - phi((t - m1) / s1))])


def reference_choose(probs, labels, method="youden", value=0.5, target_sensitivity=0.95):
    """The implementation of the empirical rules before the new rules came (torch, O(n^2))."""
    probs, labels = probs.double().flatten(), labels.long().flatten()
    if labels.min() == labels.max():
        return float(value)
    candidates = torch.unique(probs)
    pred = probs[None, :] >= candidates[:, None]
    pos = labels.bool()[None, :]
    tp, fp = (pred & pos).sum(1).double(), (pred & ~pos).sum(1).double()
    fn, tn = (~pred & pos).sum(1).double(), (~pred & ~pos).sum(1).double()
    sens, spec = tp / (tp + fn), tn / (tn + fp)
    if method == "max_f1":
        i = int(torch.argmax(2 * tp / (2 * tp + fp + fn)))
    elif method == "youden":
        i = int(torch.argmax(sens + spec - 1))
    else:
        ok = torch.nonzero(sens >= target_sensitivity).flatten()
        i = int(ok.max()) if len(ok) else 0
    low = float(candidates[i - 1]) if i > 0 else 0.0
    return (low + float(candidates[i])) / 2


# ---- the rules -------------------------------------------------------------------------------
def test_empirical_rules_are_unchanged_and_their_weighted_form_equals_repeating_items():
    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        p = np.clip(rng.random(n) + y * rng.random() * 0.7, 0, 1)
        if trial % 2:
            p = np.round(p, 1)  # ties
        pt, yt = torch.tensor(p, dtype=torch.float32), torch.tensor(y)
        for method, target in (("youden", 0.95), ("max_f1", 0.95), ("sensitivity", 0.9), ("sensitivity", 1.0)):
            assert choose_threshold(pt, yt, method, target_sensitivity=target) == reference_choose(
                pt, yt, method, target_sensitivity=target
            )
        w = rng.integers(0, 3, n)
        idx = np.repeat(np.arange(n), w)
        got = empirical_thresholds(pt.numpy(), y, w[None], "youden")[0]
        if len(idx) and y[idx].min() != y[idx].max():
            assert got == reference_choose(pt[idx], yt[idx])
        else:
            assert np.isnan(got)


@pytest.mark.parametrize("method", ["youden", "max_f1", *SMOOTH])
def test_separable_classes_give_a_threshold_in_the_gap(method):
    rng = np.random.default_rng(2)
    z = np.concatenate([rng.uniform(-6, -1, 150), rng.uniform(1.5, 7, 350)])  # gap (-1, 1.5) in logits
    y = np.r_[np.zeros(150), np.ones(350)].astype(np.int64)
    p = sigmoid(z)
    t = choose_threshold(torch.tensor(p), torch.tensor(y), method, logits=torch.tensor(z))
    low, high = p[y == 0].max(), p[y == 1].min()
    assert low < t <= high
    assert ((p >= t) == y).all()


def test_binormal_recovers_the_optimum_of_gaussian_scores():
    for m0, s0, m1, s1 in ((-3.0, 1.5, 2.0, 2.5), (-1.0, 1.0, 1.0, 1.0), (-4.0, 2.0, 3.0, 1.0)):
        z, y = gaussian_scores(m0=m0, s0=s0, m1=m1, s1=s1, n0=3000, n1=6000, seed=3)
        truth = true_binormal_optimum(m0, s0, m1, s1)
        assert binormal_cut(z, y) == pytest.approx(truth, abs=0.12)
        t = choose_threshold(sigmoid(z), y, "binormal", logits=z)
        assert t == pytest.approx(sigmoid(binormal_cut(z, y)))
    # equal variances: the midpoint of the means, exactly (of the fitted means)
    z, y = gaussian_scores(m0=-1, s0=1, m1=1, s1=1, seed=4)
    z0, z1 = z[y == 0], z[y == 1]
    z1 = (z1 - z1.mean()) / z1.std(ddof=1) * z0.std(ddof=1) + z1.mean()  # the same fitted sd
    zz = np.r_[z0, z1]
    assert binormal_cut(zz, y) == pytest.approx((z0.mean() + z1.mean()) / 2, abs=1e-9)


def test_kernel_and_bootstrap_are_near_the_optimum_on_gaussian_scores():
    z, y = gaussian_scores(n0=1500, n1=3000, seed=5)
    truth = true_binormal_optimum(-3.0, 1.5, 2.0, 2.5)
    assert kernel_cut(z, y) == pytest.approx(truth, abs=0.35)
    t = choose_threshold(sigmoid(z), y, "youden_bootstrap")
    assert float(np.log(t / (1 - t))) == pytest.approx(truth, abs=0.5)


def test_bootstrap_median_is_deterministic_with_its_seed_and_within_the_data():
    z, y = gaussian_scores(n0=60, n1=140, seed=6)
    p = sigmoid(z)
    a = choose_threshold(p, y, "youden_bootstrap", resamples=100, seed=7)
    assert a == choose_threshold(p, y, "youden_bootstrap", resamples=100, seed=7)
    others = {choose_threshold(p, y, "youden_bootstrap", resamples=100, seed=s) for s in range(8, 14)}
    assert len(others | {a}) > 1  # the seed does change the resamples
    assert p.min() / 2 <= a <= p.max()  # a midpoint between two scores (or 0 and the lowest)
    assert min(others) >= p.min() / 2 and max(others) <= p.max()


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99, 1.0])
def test_sensitivity_target_is_met_at_the_highest_threshold_that_meets_it(target):
    z, y = gaussian_scores(n0=200, n1=500, seed=8)
    p = sigmoid(z)
    t = choose_threshold(p, y, "sensitivity", target_sensitivity=target)
    recall = (p[y == 1] >= t).mean()
    assert recall >= target
    candidates = np.unique(p)
    chosen = candidates[candidates >= t][0]  # t is the middle of the gap below this score
    assert (p[y == 1] >= chosen).mean() == recall
    if chosen < candidates[-1]:  # the next candidate up would miss the target
        assert (p[y == 1] >= candidates[candidates > chosen][0]).mean() < target


def test_platt_recovers_the_class_balanced_cut_of_a_logistic_model():
    rng = np.random.default_rng(9)
    z = rng.normal(0, 2.5, 40_000)
    a, b = 1.5, -0.75
    y = (rng.random(len(z)) < sigmoid(a * z + b)).astype(np.int64)
    prior = math.log((y == 0).sum() / (y == 1).sum())  # equal class weights move the intercept by this
    assert platt_cut(z, y) == pytest.approx(-(b + prior) / a, abs=0.06)


def test_platt_stays_finite_on_nearly_separable_resamples():
    """Plain Newton overshoots on scores like these (a real checkpoint's validation logits);
    the line search keeps every resample's cut inside the scores' range."""
    z, y = gaussian_scores(n0=135, n1=391, m0=-8.7, s0=2.5, m1=6.4, s1=4.5, seed=12)
    from pneumonia.evaluation.threshold import bootstrap_weights

    for w in bootstrap_weights(len(y), 60, 0):
        idx = np.repeat(np.arange(len(y)), w)
        cut = platt_cut(z[idx], y[idx])
        assert cut is not None and z.min() < cut < z.max()


def test_midpoint_is_halfway_between_the_class_medians():
    z, y = gaussian_scores(seed=13)
    t = choose_threshold(sigmoid(z), y, "midpoint", logits=z)
    assert t == pytest.approx(sigmoid((np.median(z[y == 0]) + np.median(z[y == 1])) / 2))


def test_temperature_scaling_changes_no_decision_of_any_rule():
    z, y = gaussian_scores(n0=120, n1=300, seed=10)
    for method in METHODS:
        decisions = []
        for temp in (1.0, 0.7, 2.5):
            zt = z / temp
            p = sigmoid(zt)
            t = choose_threshold(p, y, method, logits=zt)
            decisions.append(p >= t)
        assert (decisions[0] == decisions[1]).all() and (decisions[0] == decisions[2]).all(), method


def test_one_class_or_fixed_gives_the_value():
    p = np.array([0.2, 0.7, 0.9])
    for method in METHODS:
        assert choose_threshold(p, np.ones(3), method, value=0.4) == 0.4
    assert choose_threshold(p, np.array([0, 1, 1]), "fixed", value=0.3) == 0.3


def test_invalid_settings_are_one_line_config_errors_naming_the_key():
    with pytest.raises(ConfigError) as err:
        choose_threshold(torch.rand(4), torch.tensor([0, 1, 0, 1]), "median")
    assert "threshold.method='median'" in str(err.value) and "\n" not in str(err.value)
    assert all(m in str(err.value) for m in METHODS)
    for bad, key in (
        ({"method": "youden_boot"}, "threshold.method"),
        ({"value": 1.5}, "threshold.value"),
        ({"target_sensitivity": 0}, "threshold.target_sensitivity"),
        ({"bootstrap_resamples": 0}, "threshold.bootstrap_resamples"),
        ({"bootstrap_seed": -1}, "threshold.bootstrap_seed"),
        ({"bootstrap_resamples": True}, "threshold.bootstrap_resamples"),
        ({"kernel_bandwidth": -1}, "threshold.kernel_bandwidth"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
            check_threshold_settings(bad)
        assert "\n" not in str(err.value)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_settings(None, None, bad)
    check_settings(None, None, {"method": "binormal"})  # every method passes
    for method in METHODS:
        assert rule_options({"method": method})["method"] == method
    # the keys of conf/train.yaml's threshold block are exactly these settings
    from omegaconf import OmegaConf

    from tests.helpers import PROJECT_ROOT

    block = OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "conf" / "train.yaml").threshold)
    assert set(block) == set(DEFAULTS) and check_threshold_settings(block) == {**DEFAULTS, **block}


# ---- the study's machinery --------------------------------------------------------------------
def synthetic_patients(n_patients=120, seed=11):
    """Scores of patients with 1-3 images each, pneumonia patients higher."""
    rng = np.random.default_rng(seed)
    z, y, groups = [], [], []
    for k in range(n_patients):
        label = int(k % 3 != 0)
        for _ in range(int(rng.integers(1, 4))):
            z.append(rng.normal(2.0 if label else -2.5, 1.8))
            y.append(label)
            groups.append(f"patient{k}")
    return np.array(z), np.array(y), groups


def test_half_splits_keep_patients_together_and_both_classes_on_both_sides():
    z, y, groups = synthetic_patients()
    masks = ts.half_splits(y, groups, 50, seed=0)
    assert masks.shape == (50, len(y)) and masks.dtype == bool
    g = np.array(groups)
    for m in masks:
        assert not set(g[m]) & set(g[~m])
        assert set(y[m]) == {0, 1} and set(y[~m]) == {0, 1}
        assert 0.3 < m.mean() < 0.7
    assert (masks == ts.half_splits(y, groups, 50, seed=0)).all()
    assert not (masks == ts.half_splits(y, groups, 50, seed=1)).all()


def test_weighted_thresholds_equal_the_rule_on_the_resampled_items():
    z, y, groups = synthetic_patients(60)
    p = sigmoid(z)
    codes = np.unique(groups, return_inverse=True)[1]
    from pneumonia.evaluation.threshold import bootstrap_weights

    w = bootstrap_weights(len(y), 5, 0, codes)
    assert w.shape == (5, len(y))
    for rule in ts.RULES:
        got = ts.weighted_thresholds(rule, p, y, z, w)
        assert got.shape == (5,)
        for b in (0, 3):
            idx = np.repeat(np.arange(len(y)), w[b])
            assert got[b] == pytest.approx(ts.rule_threshold(rule, p[idx], y[idx], z[idx]), abs=1e-12), rule[0]


def test_study_is_deterministic_and_a_worse_rule_scores_worse():
    z, y, groups = synthetic_patients()
    p = sigmoid(z)
    rules = (("youden", "youden", {}), ("fixed 0.02", "fixed", {"value": 0.02}), ("binormal", "binormal", {}))
    a = ts.study_scores(p, y, z, groups, rules=rules, splits=40, resamples=60, seed=3)
    b = ts.study_scores(p, y, z, groups, rules=rules, splits=40, resamples=60, seed=3)
    strip = lambda s: {k: {kk: vv for kk, vv in v.items() if kk != "seconds"} for k, v in s.items()}  # noqa: E731
    assert strip(a) == strip(b)
    assert set(a) == {"youden", "fixed 0.02", "binormal"}
    for r in a.values():
        assert r["split_half"]["splits"] == 40 and r["bootstrap"]["resamples"] == 60
        assert 0 <= r["split_half"]["balanced_accuracy"]["mean"] <= 1
    fixed, youden = a["fixed 0.02"], a["youden"]
    assert fixed["bootstrap"]["threshold"]["std"] == pytest.approx(0.0, abs=1e-12)
    assert fixed["split_half"]["balanced_accuracy"]["mean"] < youden["split_half"]["balanced_accuracy"]["mean"] - 0.05
    assert fixed["split_half"]["specificity"]["mean"] < youden["split_half"]["specificity"]["mean"]
    assert fixed["split_half"]["vs_first_rule"]["worse"] > 0.9
    assert fixed["margin"]["specificity"] < youden["margin"]["specificity"]
    summary = ts.across_checkpoints([a, b])
    assert summary["youden"]["threshold"]["std"] == pytest.approx(0.0, abs=1e-12)
    assert "| youden |" in ts.summary_table(summary, 2) and "| binormal |" in ts.checkpoint_table(a)


def test_study_cli_writes_markdown_and_json(tmp_path, monkeypatch):
    def fake_scores(path, data_root=None, datamodules=None):
        z, y, groups = synthetic_patients(seed=int(path[-1]))
        return {
            "checkpoint": path,
            "seed": int(path[-1]),
            "probs": sigmoid(z),
            "logits": z,
            "labels": y,
            "paths": [f"{g}.jpeg" for g in groups],
            "patients": groups,
            "stored_threshold": 0.5,
            "stored_method": "youden",
            "stored_temperature": 1.0,
            "precision": "32-true",
        }

    monkeypatch.setattr(study_tool, "validation_scores", fake_scores)
    assert study_tool.main(["ck1", "ck2", "--splits", "20", "--resamples", "30", "--out", str(tmp_path / "study")]) == 0
    result = json.loads((tmp_path / "study.json").read_text())
    text = (tmp_path / "study.md").read_text()
    assert [c["seed"] for c in result["checkpoints"]] == [1, 2]
    assert set(result["across_checkpoints"]) == {name for name, _, _ in ts.RULES}
    assert "## Across checkpoints" in text and text.count("| youden_bootstrap |") == 3
    assert study_tool.main(["ck1", "--splits", "0"]) == 2


def test_study_scores_validation_as_calibration_did(tiny_checkpoint, xray_root, tmp_path):
    """The tiny checkpoint was calibrated with Youden: the study's validation scores give back
    its stored threshold; and calibration passes the new settings through."""
    import lightning as L

    from pneumonia.data.datamodule import ChestXrayDataModule
    from pneumonia.runners.calibration import calibrate_threshold
    from pneumonia.inference import Predictor

    scores = study_tool.validation_scores(tiny_checkpoint, str(xray_root))
    assert len(scores["labels"]) == len(scores["patients"]) > 0
    youden = ts.rule_threshold(("youden", "youden", {}), scores["probs"], scores["labels"], scores["logits"])
    assert youden == pytest.approx(scores["stored_threshold"], abs=1e-6)

    ckpt = tmp_path / "best.ckpt"
    shutil.copy(tiny_checkpoint, ckpt)
    raw = Predictor.from_checkpoint(ckpt)
    dm = ChestXrayDataModule(**{**raw.data_settings, "root": str(xray_root), "bad_image_report": None})
    dm.setup("fit")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=raw.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    settings = {**DEFAULTS, "method": "youden_bootstrap", "bootstrap_resamples": 50, "bootstrap_seed": 3}
    report = calibrate_threshold(
        trainer, dm, str(ckpt), settings, tmp_path, interval_settings={"resamples": 0}
    ).val_report
    expected = choose_threshold(scores["probs"], scores["labels"], "youden_bootstrap", resamples=50, seed=3)
    assert report["threshold"] == pytest.approx(expected, abs=1e-6)
    assert Predictor.from_checkpoint(ckpt).recipe.threshold_method == "youden_bootstrap"
