"""Statistics of an evaluation, each a small pure function on numpy arrays (no torch, no
scipy): bootstrap intervals that resample patients, AUROC by ranks, DeLong's test,
McNemar's test, calibration error, Brier score and temperature scaling.

Conventions: `labels` are 0 (NORMAL) / 1 (PNEUMONIA), `scores`/`probs` are P(pneumonia),
a decision is PNEUMONIA when `probs >= threshold` (as everywhere in the project). Inputs may
be lists, numpy arrays or CPU torch tensors.

References
- Bootstrap by cluster (patient): Davison & Hinkley, *Bootstrap Methods and their
  Application* (1997), section 3.8; percentile intervals.
- DeLong, DeLong & Clarke-Pearson, Biometrics 44 (1988) 837-845; fast form by midranks:
  Sun & Xu, IEEE Signal Processing Letters 21 (2014) 1389-1393.
- McNemar, Psychometrika 12 (1947) 153-157; exact binomial form for few discordant pairs.
- Expected calibration error with equal-width bins: Naeini et al., AAAI 2015; Guo et al.,
  "On Calibration of Modern Neural Networks", ICML 2017 (also temperature scaling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auroc")
DEFAULT_RESAMPLES = 2000
DEFAULT_BINS = 15
# the settings train.py's `calibration` and `intervals` default to (here, not in calibration.py:
# modules that only read checkpoints, like ensemble.members, need them without Lightning)
CALIBRATION_DEFAULTS = {"temperature": False, "ece_bins": DEFAULT_BINS}
INTERVAL_DEFAULTS = {"resamples": DEFAULT_RESAMPLES, "seed": 0}
EXACT_MCNEMAR_BELOW = 25  # discordant pairs: below this McNemar uses the exact binomial test
_CHUNK_ELEMENTS = 4_000_000  # resamples x images per vectorised chunk (about 32 MB of float64)


def _arr(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)


# ---- point estimates ------------------------------------------------------------------
def midranks(x: Any) -> np.ndarray:
    """Ranks 1..n of `x`, ties sharing the mean of their ranks (what Mann-Whitney uses)."""
    x = _arr(x)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties 1/2
    (Mann-Whitney U / (n_pos n_neg)); NaN when a class is missing."""
    scores, labels = _arr(scores), _arr(labels, np.int64)
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = midranks(scores)
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion_rates(tp: Any, fp: Any, fn: Any, tn: Any) -> dict[str, np.ndarray]:
    """Accuracy, precision, recall (sensitivity), specificity and F1 from confusion counts
    (arrays of any shape, e.g. one entry per bootstrap resample); NaN where undefined."""
    tp, fp, fn, tn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn, tn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (tp + tn) / (tp + fp + fn + tn),
            "precision": tp / (tp + fp),
            "recall": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }


# ---- the bootstrap --------------------------------------------------------------------
def group_codes(groups: Sequence[Any] | None, n: int) -> tuple[np.ndarray, int]:
    """(code per item in 0..G-1, G): items sharing a group (a patient) share a code;
    `None` makes every item its own group."""
    if groups is None:
        return np.arange(n), n
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group ids for {n} items")
    _, codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    return codes.reshape(-1), int(codes.max()) + 1 if n else 0


def resample_weights(codes: np.ndarray, n_groups: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, n_items) integer weights: each resample draws `n_groups` groups with
    replacement and an item counts as often as its group was drawn (the cluster bootstrap;
    with one item per group it is the ordinary bootstrap)."""
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    flat = (draws + np.arange(n_resamples)[:, None] * n_groups).reshape(-1)
    counts = np.bincount(flat, minlength=n_resamples * n_groups).reshape(n_resamples, n_groups)
    return counts[:, codes]


def weighted_auroc(weights: np.ndarray, scores: Any, labels: Any) -> np.ndarray:
    """AUROC of each row of integer `weights` (B, n) over the items (an item of weight k
    counts k times), by ranks: a sort once, then cumulative sums for all rows at once.
    NaN for rows without a positive or without a negative."""
    scores, labels = _arr(scores), _arr(labels, np.int64)
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order].astype(bool)
    w = np.asarray(weights, dtype=np.float64)[:, order]
    start = np.searchsorted(s, s, side="left")  # first item tied with each item
    end = np.searchsorted(s, s, side="right")  # one past the last
    neg_cum = np.zeros((w.shape[0], w.shape[1] + 1))
    np.cumsum(w * ~y, axis=1, out=neg_cum[:, 1:])
    pos = np.flatnonzero(y)
    below = neg_cum[:, start[pos]]  # negative weight scored strictly lower than each positive
    tied = neg_cum[:, end[pos]] - below
    num = (w[:, pos] * (below + 0.5 * tied)).sum(1)
    n_pos, n_neg = w[:, y].sum(1), w[:, ~y].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), num / (n_pos * n_neg), np.nan)


def bootstrap_metrics(
    probs: Any,
    labels: Any,
    threshold: float,
    groups: Sequence[Any] | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    metrics: Sequence[str] = METRICS,
    decisions: Any | None = None,
) -> dict[str, np.ndarray]:
    """Each metric of `metrics` on `n_resamples` bootstrap resamples (arrays of length B),
    resampling the `groups` (patients) when given, else the items. Vectorised: a resample
    is a row of integer weights, counts are matrix products and AUROC comes from ranks, so
    2000 resamples of 624 images take a fraction of a second. Seeded: the same inputs and
    seed give the same resamples (and two models scored on the same images get the same
    resamples: a paired bootstrap). `decisions` (0/1), when given, replace `probs >= threshold`."""
    probs, labels = _arr(probs), _arr(labels, np.int64)
    codes, n_groups = group_codes(groups, len(labels))
    rng = np.random.default_rng(seed)
    pred = (probs >= threshold if decisions is None else _arr(decisions) > 0).astype(np.float64)
    y = labels.astype(np.float64)
    columns = np.stack([pred * y, pred * (1 - y), (1 - pred) * y, (1 - pred) * (1 - y)], 1)  # tp fp fn tn
    out: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    chunk = max(1, _CHUNK_ELEMENTS // max(1, len(labels)))
    for first in range(0, n_resamples, chunk):
        w = resample_weights(codes, n_groups, min(chunk, n_resamples - first), rng)
        tp, fp, fn, tn = (w @ columns).T
        rates = confusion_rates(tp, fp, fn, tn)
        for m in metrics:
            out[m].append(weighted_auroc(w, probs, labels) if m == "auroc" else rates[m])
    return {m: np.concatenate(v) if v else np.empty(0) for m, v in out.items()}


def percentile_interval(samples: Any, level: float = 0.95) -> list[float] | None:
    """The percentile interval [lo, hi] of bootstrap `samples` (NaN resamples, where the
    metric was undefined, left out); None when no resample defines it."""
    samples = _arr(samples)
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return None
    alpha = (1 - level) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha])
    return [float(lo), float(hi)]


def bootstrap_ci(
    probs: Any,
    labels: Any,
    threshold: float,
    groups: Sequence[Any] | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    metrics: Sequence[str] = METRICS,
) -> dict[str, list[float] | None]:
    """{metric: [lo, hi]}: percentile bootstrap intervals (see `bootstrap_metrics`)."""
    samples = bootstrap_metrics(probs, labels, threshold, groups, n_resamples=n_resamples, seed=seed, metrics=metrics)
    return {m: percentile_interval(samples[m], level) for m in metrics}


# ---- comparing two models on the same images ------------------------------------------
def delong_covariance(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(AUROCs (k,), their covariance matrix (k, k)) of k score vectors on the same items,
    by DeLong's method in the fast midrank form of Sun & Xu (2014): O(k n log n).
    `scores` is (k, n) or (n,); needs at least 2 positives and 2 negatives."""
    labels = _arr(labels, np.int64).astype(bool)
    scores = np.atleast_2d(
        np.asarray(scores.detach().cpu().numpy() if hasattr(scores, "detach") else scores, dtype=np.float64)
    )
    m, n = int(labels.sum()), int((~labels).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positives and 2 negatives (got {m} and {n})")
    pos, neg = scores[:, labels], scores[:, ~labels]
    tx = np.stack([midranks(r) for r in pos])  # ranks among the positives
    ty = np.stack([midranks(r) for r in neg])  # among the negatives
    tz = np.stack([midranks(r) for r in np.concatenate([pos, neg], 1)])  # among all
    aucs = (tz[:, :m].sum(1) / m - (m + 1) / 2) / n
    v_pos = (tz[:, :m] - tx) / n  # per positive: fraction of negatives it outranks (structural component)
    v_neg = 1.0 - (tz[:, m:] - ty) / m  # per negative: fraction of positives that outrank it
    cov = np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n
    return aucs, cov


def delong_test(scores_a: Any, scores_b: Any, labels: Any, level: float = 0.95) -> dict[str, Any]:
    """DeLong's test of AUROC(B) - AUROC(A) = 0 for two models scored on the same items:
    the difference, its standard error, the z statistic, the two-sided p-value and a
    normal-approximation interval."""
    aucs, cov = delong_covariance(np.stack([_arr(scores_a), _arr(scores_b)]), labels)
    diff = float(aucs[1] - aucs[0])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    z_crit = NormalDist().inv_cdf(0.5 + level / 2)
    if se == 0.0:  # identical rankings (diff 0), or a degenerate case: no z to speak of
        z, p = (0.0, 1.0) if diff == 0.0 else (None, 0.0)
    else:
        z = diff / se
        p = 2 * (1 - NormalDist().cdf(abs(z)))
    return {
        "auroc_a": float(aucs[0]),
        "auroc_b": float(aucs[1]),
        "difference": diff,
        "se": se,
        "z": z,
        "p_value": p,
        "ci95": [diff - z_crit * se, diff + z_crit * se],
    }


def mcnemar_test(b: int, c: int, exact_below: int = EXACT_MCNEMAR_BELOW) -> dict[str, Any]:
    """McNemar's test from the discordant counts of a paired 2x2 table: `b` pairs where
    only A is right, `c` where only B is right. With fewer than `exact_below` discordant
    pairs: the exact two-sided binomial test (b ~ Binomial(b + c, 1/2)); otherwise the
    chi-square statistic with continuity correction, (|b - c| - 1)^2 / (b + c), 1 d.f."""
    b, c = int(b), int(c)
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "method": "exact binomial", "statistic": None, "p_value": 1.0}
    if n < exact_below:
        tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2.0**n
        return {"b": b, "c": c, "method": "exact binomial", "statistic": None, "p_value": min(1.0, 2 * tail)}
    stat = max(abs(b - c) - 1, 0) ** 2 / n
    # chi-square with 1 d.f.: P(X > s) = P(|Z| > sqrt(s)) = erfc(sqrt(s / 2))
    return {
        "b": b,
        "c": c,
        "method": "chi-square, continuity-corrected",
        "statistic": stat,
        "p_value": math.erfc(math.sqrt(stat / 2)),
    }


def paired_bootstrap_differences(
    probs_a: Any,
    probs_b: Any,
    labels: Any,
    decisions_a: Any,
    decisions_b: Any,
    groups: Sequence[Any] | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """{metric: {"a", "b", "difference" (B - A), "ci95"}} for two models' probabilities and
    0/1 decisions on the same items: the same resamples (of the `groups`, patients, when
    given) for both, so the interval is that of the paired difference."""
    a = bootstrap_metrics(probs_a, labels, 0.5, groups, n_resamples=n_resamples, seed=seed, decisions=decisions_a)
    b = bootstrap_metrics(probs_b, labels, 0.5, groups, n_resamples=n_resamples, seed=seed, decisions=decisions_b)
    point_a = point_metrics(probs_a, labels, 0.5, decisions=decisions_a)
    point_b = point_metrics(probs_b, labels, 0.5, decisions=decisions_b)
    return {
        m: {
            "a": point_a[m],
            "b": point_b[m],
            "difference": _sub(point_b[m], point_a[m]),
            "ci95": percentile_interval(b[m] - a[m], level),
        }
        for m in METRICS
    }


def point_metrics(probs: Any, labels: Any, threshold: float, decisions: Any | None = None) -> dict[str, float | None]:
    """The six metrics of one set of predictions (None where undefined); `decisions` (0/1),
    when given, replace `probs >= threshold`."""
    probs, labels = _arr(probs), _arr(labels, np.int64)
    pred = probs >= threshold if decisions is None else _arr(decisions) > 0
    pos = labels == 1
    rates = confusion_rates((pred & pos).sum(), (pred & ~pos).sum(), (~pred & pos).sum(), (~pred & ~pos).sum())
    values = {**{k: float(v) for k, v in rates.items()}, "auroc": auroc(probs, labels)}
    return {k: None if math.isnan(values[k]) else values[k] for k in METRICS}


def _sub(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else x - y


# ---- calibration ----------------------------------------------------------------------
def reliability_bins(probs: Any, labels: Any, bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
    """Equal-width bins of P(pneumonia) on [0, 1] (the last bin includes 1): per bin the
    edges, the image count, the mean predicted probability and the observed fraction of
    pneumonia (NaN for empty bins)."""
    probs, labels = _arr(probs), _arr(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.floor(probs * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(idx, weights=probs, minlength=bins) / count
        frac_pos = np.bincount(idx, weights=labels, minlength=bins) / count
    return {"edges": edges, "count": count, "mean_probability": mean_prob, "fraction_positive": frac_pos}


def expected_calibration_error(probs: Any, labels: Any, bins: int = DEFAULT_BINS) -> float:
    """ECE of P(pneumonia) with `bins` equal-width bins: sum over bins of (images in the bin
    / all images) x |mean predicted probability - observed fraction of pneumonia|. (The
    probability of the positive class, not of the predicted class: what a reliability
    diagram of P(pneumonia) shows.) 0 is perfect."""
    r = reliability_bins(probs, labels, bins)
    used = r["count"] > 0
    if not used.any():
        return float("nan")
    gaps = np.abs(r["mean_probability"][used] - r["fraction_positive"][used])
    return float((r["count"][used] * gaps).sum() / r["count"].sum())


def brier_score(probs: Any, labels: Any) -> float:
    """Mean squared difference between P(pneumonia) and the 0/1 label (0 is perfect, 0.25 is
    a constant 0.5)."""
    probs, labels = _arr(probs), _arr(labels)
    return float(np.mean((probs - labels) ** 2)) if len(probs) else float("nan")


def sigmoid(x: Any) -> np.ndarray:
    x = _arr(x)
    return np.exp(-np.logaddexp(0.0, -x))


def logit(p: Any, eps: float = 1e-12) -> np.ndarray:
    p = np.clip(_arr(p), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def binary_nll(logits: Any, labels: Any) -> float:
    """Mean negative log-likelihood (binary cross-entropy) of sigmoid(logits), computed stably."""
    z, y = _arr(logits), _arr(labels)
    return float(np.mean(np.logaddexp(0.0, -(2 * y - 1) * z)))


def fit_temperature(logits: Any, labels: Any, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T > 0 minimising the NLL of sigmoid(logits / T) on (`logits`,
    `labels`), searched in `bounds` (Guo et al. 2017). The NLL is convex in 1/T, so a
    golden-section search on log(1/T) finds its minimum; T > 1 softens over-confident
    scores, T < 1 sharpens under-confident ones. It keeps the ranking (AUROC) unchanged."""
    z, y = _arr(logits), _arr(labels)
    if not len(z):
        return 1.0
    lo, hi = math.log(1 / bounds[1]), math.log(1 / bounds[0])  # log(1/T)

    def nll(log_a: float) -> float:
        return binary_nll(z * math.exp(log_a), y)

    ratio = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    f1, f2 = nll(x1), nll(x2)
    for _ in range(80):
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - ratio * (hi - lo)
            f1 = nll(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + ratio * (hi - lo)
            f2 = nll(x2)
    return float(1 / math.exp((lo + hi) / 2))
