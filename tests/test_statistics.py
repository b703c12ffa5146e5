"""The statistics of evaluation/statistics.py against known answers: exact values computed by
hand, the O(n^2) textbook definitions, and coverage of the true value over repeated samples."""

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from pneumonia.evaluation import analysis
from pneumonia.evaluation import statistics as st
from pneumonia.evaluation.metrics import report
from pneumonia.evaluation.threshold import choose_threshold


def binormal(rng, n_pos, n_neg, d):
    """Scores N(d, 1) for positives, N(0, 1) for negatives: AUROC = Phi(d / sqrt(2))."""
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    return rng.normal(d * y, 1.0), y


# ---- AUROC by ranks ---------------------------------------------------------------------
def test_auroc_by_ranks_matches_torchmetrics_and_counts_ties_half():
    rng = np.random.default_rng(0)
    s, y = binormal(rng, 70, 50, 1.0)
    s = np.round(s, 1)  # many ties
    assert st.auroc(s, y) == pytest.approx(float(binary_auroc(torch.tensor(s), torch.tensor(y))), abs=1e-6)
    # a hand example: positives {0.9, 0.5}, negatives {0.5, 0.1}: pairs 1 + 1 + 0.5 + 1 = 3.5 of 4
    assert st.auroc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(3.5 / 4)
    assert math.isnan(st.auroc([0.1, 0.2], [1, 1]))


def test_weighted_auroc_is_the_auroc_of_the_resample_it_describes():
    rng = np.random.default_rng(1)
    s, y = binormal(rng, 30, 20, 0.8)
    s = np.round(s, 1)
    codes, n_groups = st.group_codes([i // 3 for i in range(50)], 50)
    weights = st.resample_weights(codes, n_groups, 5, rng)
    for w in weights:
        idx = np.repeat(np.arange(50), w)  # the resample written out
        assert st.weighted_auroc(w[None], s, y)[0] == pytest.approx(st.auroc(s[idx], y[idx]), abs=1e-12)
    assert np.allclose(st.weighted_auroc(np.ones((2, 50)), s, y), st.auroc(s, y))


def test_resample_weights_move_whole_patients():
    rng = np.random.default_rng(2)
    groups = ["a", "a", "b", "c", "c", "c"]
    codes, n_groups = st.group_codes(groups, len(groups))
    w = st.resample_weights(codes, n_groups, 400, rng)
    assert n_groups == 3 and w.shape == (400, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()
    assert (w[:, [0, 2, 3]].sum(1) == 3).all()  # 3 patients drawn per resample
    assert st.group_codes(None, 4)[1] == 4  # no ids: every item is its own group


# ---- the bootstrap ----------------------------------------------------------------------
def test_bootstrap_is_seeded_and_counts_like_the_point_estimate():
    rng = np.random.default_rng(3)
    s, y = binormal(rng, 60, 40, 1.0)
    p = 1 / (1 + np.exp(-s))
    a = st.bootstrap_ci(p, y, 0.5, n_resamples=500, seed=7)
    assert a == st.bootstrap_ci(p, y, 0.5, n_resamples=500, seed=7)
    assert a != st.bootstrap_ci(p, y, 0.5, n_resamples=500, seed=8)
    point = report(torch.tensor(p), torch.tensor(y), 0.5)
    for m in st.METRICS:
        lo, hi = a[m]
        assert lo <= point[m] + 1e-6 and point[m] - 1e-6 <= hi, m
        assert st.point_metrics(p, y, 0.5)[m] == pytest.approx(point[m], abs=1e-6)
    # one resample of all-ones weights is the sample itself
    one = st.bootstrap_metrics(p, y, 0.5, n_resamples=3, seed=0)
    assert set(one) == set(st.METRICS) and all(len(v) == 3 for v in one.values())


def test_bootstrap_interval_covers_a_known_auroc_at_about_the_nominal_rate():
    d = 1.2
    true_auroc = NormalDist().cdf(d / math.sqrt(2))
    hits = 0
    for rep in range(200):
        s, y = binormal(np.random.default_rng(1000 + rep), 40, 40, d)
        lo, hi = st.bootstrap_ci(s, y, 0.0, n_resamples=300, seed=rep, metrics=("auroc",))["auroc"]
        hits += lo <= true_auroc <= hi
    assert 0.90 <= hits / 200 <= 0.99, hits / 200  # nominal 0.95; measured 0.945


def test_patient_bootstrap_covers_clustered_data_where_an_image_bootstrap_does_not():
    """Three correlated images per patient: resampling images pretends there are 3x more
    independent samples than there are, and its intervals are too narrow."""
    d, sd_patient, sd_image = 1.2, 1.0, 0.5
    true_auroc = NormalDist().cdf(d / math.sqrt(2 * (sd_patient**2 + sd_image**2)))
    by_patient = by_image = 0
    for rep in range(200):
        rng = np.random.default_rng(5000 + rep)
        label = (np.arange(60) < 30).astype(int)
        patient_score = rng.normal(d * label, sd_patient)
        s = (patient_score[:, None] + rng.normal(0, sd_image, (60, 3))).ravel()
        y, groups = np.repeat(label, 3), np.repeat(np.arange(60), 3)
        lo, hi = st.bootstrap_ci(s, y, 0.0, groups, n_resamples=300, seed=rep, metrics=("auroc",))["auroc"]
        by_patient += lo <= true_auroc <= hi
        lo, hi = st.bootstrap_ci(s, y, 0.0, None, n_resamples=300, seed=rep, metrics=("auroc",))["auroc"]
        by_image += lo <= true_auroc <= hi
    assert by_patient / 200 >= 0.88, by_patient / 200  # measured 0.915 (60 patients)
    assert by_image / 200 <= by_patient / 200 - 0.08, (by_image, by_patient)  # measured 0.76


def test_percentile_interval_ignores_undefined_resamples():
    assert st.percentile_interval([np.nan, np.nan]) is None
    assert st.percentile_interval([1.0, np.nan, 1.0]) == [1.0, 1.0]


def test_bootstrap_of_624_images_takes_well_under_a_second():
    import time

    rng = np.random.default_rng(4)
    s, y = binormal(rng, 390, 234, 1.5)
    groups = [f"p{i // 2}" for i in range(624)]
    st.bootstrap_ci(s, y, 0.0, groups, n_resamples=50)  # warm-up
    start = time.perf_counter()
    st.bootstrap_ci(s, y, 0.0, groups, n_resamples=2000)
    assert time.perf_counter() - start < 3.0  # about 0.1 s here; generous for a loaded CI machine


# ---- DeLong -----------------------------------------------------------------------------
def _delong_by_definition(scores, labels):
    """DeLong et al. (1988) as written: psi over every (positive, negative) pair, O(m n)."""
    pos, neg = scores[:, labels == 1], scores[:, labels == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    v10, v01 = psi.mean(2), psi.mean(1)  # per positive, per negative
    cov = np.cov(v10) / pos.shape[1] + np.cov(v01) / neg.shape[1]
    return psi.mean((1, 2)), cov


def test_fast_delong_matches_the_definition_with_ties():
    rng = np.random.default_rng(5)
    s, y = binormal(rng, 45, 35, 1.0)
    scores = np.round(np.stack([s, s + rng.normal(0, 0.7, len(s)), rng.normal(0, 1, len(s))]), 1)
    aucs, cov = st.delong_covariance(scores, y)
    want_aucs, want_cov = _delong_by_definition(scores, y)
    assert np.allclose(aucs, want_aucs) and np.allclose(cov, want_cov)


def test_delong_variance_agrees_with_the_bootstrap():
    rng = np.random.default_rng(6)
    s, y = binormal(rng, 150, 150, 1.0)
    s2 = s + rng.normal(0, 0.8, len(s))
    res = st.delong_test(s, s2, y)
    a = st.bootstrap_metrics(s, y, 0.0, n_resamples=4000, seed=1, metrics=("auroc",))["auroc"]
    b = st.bootstrap_metrics(s2, y, 0.0, n_resamples=4000, seed=1, metrics=("auroc",))["auroc"]
    assert np.std(a) ** 2 == pytest.approx(st.delong_covariance(s, y)[1][0, 0], rel=0.15)
    assert np.std(b - a) == pytest.approx(res["se"], rel=0.15)
    assert res["difference"] == pytest.approx(st.auroc(s2, y) - st.auroc(s, y))
    assert res["ci95"][0] < res["difference"] < res["ci95"][1]
    assert 0 <= res["p_value"] <= 1
    same = st.delong_test(s, s, y)
    assert same["difference"] == 0 and same["p_value"] == 1.0


# ---- McNemar ----------------------------------------------------------------------------
def test_mcnemar_exact_and_chi_square_against_hand_computed_tables():
    # b=10, c=2: 12 discordant pairs (< 25): exact, 2 * P(X <= 2), X ~ Bin(12, 1/2)
    # = 2 * (1 + 12 + 66) / 4096 = 158 / 4096
    exact = st.mcnemar_test(10, 2)
    assert exact["method"] == "exact binomial" and exact["p_value"] == pytest.approx(158 / 4096)
    assert st.mcnemar_test(2, 10)["p_value"] == pytest.approx(158 / 4096)  # symmetric
    # b=30, c=15: (|30 - 15| - 1)^2 / 45 = 196 / 45 = 4.3556; chi-square(1) tail = 0.03689
    chi = st.mcnemar_test(30, 15)
    assert chi["method"].startswith("chi-square") and chi["statistic"] == pytest.approx(196 / 45)
    assert chi["p_value"] == pytest.approx(0.036888, abs=2e-6)
    assert st.mcnemar_test(0, 0)["p_value"] == 1.0 and st.mcnemar_test(5, 5)["p_value"] == 1.0


def test_mcnemar_matches_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    for b, c in ((3, 9), (7, 7), (1, 12)):
        assert st.mcnemar_test(b, c)["p_value"] == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue)
    for b, c in ((40, 22), (100, 70)):
        stat = (abs(b - c) - 1) ** 2 / (b + c)
        assert st.mcnemar_test(b, c)["p_value"] == pytest.approx(stats.chi2.sf(stat, 1))


# ---- calibration ------------------------------------------------------------------------
def test_ece_of_perfectly_calibrated_scores_is_near_zero_and_of_a_known_gap_is_that_gap():
    rng = np.random.default_rng(7)
    p = rng.random(50_000)
    y = (rng.random(50_000) < p).astype(int)  # the label is 1 with probability p: calibrated
    assert st.expected_calibration_error(p, y, 15) < 0.01
    # every image says 0.8, half are pneumonia: one bin, gap 0.3
    assert st.expected_calibration_error(np.full(10, 0.8), [1] * 5 + [0] * 5) == pytest.approx(0.3)
    assert st.brier_score([1.0, 0.0, 0.5], [1, 0, 1]) == pytest.approx(0.25 / 3)


def test_reliability_bins_are_15_equal_width_bins_with_1_in_the_last():
    r = st.reliability_bins([0.0, 1 / 15 - 1e-9, 1 / 15, 0.5, 1.0], [0, 0, 1, 1, 1])
    assert len(r["edges"]) == 16 and r["edges"][1] == pytest.approx(1 / 15)
    assert r["count"].tolist()[:2] == [2, 1] and r["count"][-1] == 1 and r["count"].sum() == 5


def test_temperature_scaling_undoes_over_confidence():
    rng = np.random.default_rng(8)
    true_logits = rng.normal(0, 2, 5000)
    y = (rng.random(5000) < st.sigmoid(true_logits)).astype(int)
    logits = 3 * true_logits  # an over-confident model: 3x the right logits
    t = st.fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.1)
    before = st.expected_calibration_error(st.sigmoid(logits), y)
    after = st.expected_calibration_error(st.sigmoid(logits / t), y)
    assert after < before / 2, (before, after)
    assert st.binary_nll(logits / t, y) < st.binary_nll(logits, y)
    assert st.auroc(logits / t, y) == pytest.approx(st.auroc(logits, y))  # the ranking does not change
    # an under-confident model gets T < 1
    assert st.fit_temperature(true_logits / 2, y) == pytest.approx(0.5, rel=0.1)


# ---- the analysis sections --------------------------------------------------------------
def test_operating_points_keep_the_target_sensitivity_and_match_the_threshold_method():
    rng = np.random.default_rng(9)
    s, y = binormal(rng, 200, 120, 1.5)
    p = 1 / (1 + np.exp(-s))
    rows = analysis.operating_points(p, y, 0.42)
    assert [r["target_sensitivity"] for r in rows] == [0.90, 0.95, 0.99, None]
    for r in rows[:3]:
        assert r["sensitivity"] >= r["target_sensitivity"]
        assert r["threshold"] == pytest.approx(
            choose_threshold(
                torch.tensor(p), torch.tensor(y), "sensitivity", target_sensitivity=r["target_sensitivity"]
            )
        )
    assert rows[0]["specificity"] >= rows[1]["specificity"] >= rows[2]["specificity"]
    assert rows[-1]["threshold"] == 0.42 and rows[-1]["tp"] + rows[-1]["fn"] == 200


def test_subgroups_and_patients_from_kaggle_names():
    paths = [
        "test/PNEUMONIA/person1_bacteria_1.jpeg",
        "test/PNEUMONIA/person1_bacteria_2.jpeg",
        "test/PNEUMONIA/person2_virus_3.jpeg",
        "test/PNEUMONIA/person3_virus_4.jpeg",
        "test/NORMAL/IM-0001-0001.jpeg",
        "test/NORMAL/IM-0001-0002.jpeg",
        "test/NORMAL/IM-0002-0001.jpeg",
    ]
    y = np.array([1, 1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.2, 0.8, 0.3, 0.1, 0.7, 0.2])
    sub = analysis.subgroups(p, y, 0.5, paths, resamples=200)
    rows = {r["subtype"]: r for r in sub["rows"]}
    assert sub["available"] and set(rows) == {"bacteria", "virus"}
    assert rows["bacteria"]["images"] == 2 and rows["bacteria"]["patients"] == 1
    assert rows["bacteria"]["recall"] == 0.5 and rows["virus"]["recall"] == 0.5 and rows["virus"]["missed"] == 1
    pp = analysis.per_patient(p, y, 0.5, paths, resamples=200)
    # patients: person1 (max 0.9, +), person2 (0.8, +), person3 (0.3, +), normal1 (max 0.7, -), normal2 (0.2, -)
    assert pp["patients"] == 5 and (pp["positive"], pp["negative"]) == (3, 2)
    assert (pp["tp"], pp["fn"], pp["fp"], pp["tn"]) == (2, 1, 1, 1)
    assert pp["auroc"] == pytest.approx(st.auroc([0.9, 0.8, 0.3, 0.7, 0.2], [1, 1, 1, 0, 0]))


def test_unknown_names_say_so():
    paths = ["a/PNEUMONIA/scan1.png", "a/PNEUMONIA/scan2.png", "a/NORMAL/scan3.png", "a/NORMAL/scan4.png"]
    p, y = np.array([0.9, 0.4, 0.2, 0.6]), np.array([1, 1, 0, 0])
    assert not analysis.subgroups(p, y, 0.5, paths)["available"]
    assert "no pneumonia subtype" in analysis.subgroups(p, y, 0.5, paths)["note"]
    pp = analysis.per_patient(p, y, 0.5, paths)
    assert not pp["available"] and "no patient ids" in pp["note"]
    _, meta = analysis.intervals(p, y, 0.5, paths, resamples=100)
    assert meta["unit"] == "image" and meta["units"] == 4


def test_zero_error_metrics_get_an_exact_bound():
    paths = [f"x/NORMAL/IM-{i:04d}-0001.jpeg" for i in range(50)] + [
        f"x/PNEUMONIA/person{i}_virus_1.jpeg" for i in range(50)
    ]
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    p = np.r_[np.full(50, 0.1), np.linspace(0.3, 0.9, 50)]  # no false positive at 0.5
    out = analysis.evaluation_summary(p, y, 0.5, paths, resamples=300)
    assert out["ci95"]["specificity"] == [1.0, 1.0]
    z = out["bootstrap"]["zero_width"]["specificity"]
    assert z["n"] == 50 and z["exact_ci95"][0] == pytest.approx(0.025 ** (1 / 50))
