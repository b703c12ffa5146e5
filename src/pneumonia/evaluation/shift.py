"""Does a folder look like the data the model was trained on? Its score distribution and
simple image statistics against a reference from the training hospital, with two-sample
Kolmogorov-Smirnov tests; no labels needed.

The reference is the checkpoint's **validation split** (patient-grouped, held out from
training, from the same hospital and decoded by the same preset):

- scores: the validation probabilities, read back from the validation ROC calibration stores
  in every calibrated checkpoint (`val_roc`: sensitivity and specificity at each distinct
  score give the number of images of each class at that score; exact up to 2000 distinct
  scores, a rank-spaced subset beyond);
- images: `image_reference`, stored by calibration beside it (`shift_reference`): per image
  of the decoded uint8 validation images, the mean and standard deviation of its pixels
  (0-255) and the share of near-black pixels (below `DARK`: black borders, a wider field of
  view), plus the pooled intensity histogram (`BINS` bins) for the plot. A checkpoint
  calibrated before this has scores only (`python -m pneumonia.tools.calibrate CKPT` adds
  the images' part).

A quantity counts as shifted when its KS test has p < `ALPHA` **and** its statistic D (the
largest gap between the two empirical distribution functions, 0 to 1) exceeds `MIN_EFFECT`:
with hundreds of images a tiny, harmless difference is "significant", and with ten images a
large one may not be.

The scores also move with the share of pneumonia in the folder (a different prevalence, not a
different hospital: a folder of pneumonia images alone scores high). So the folder's scores
are compared with the **mixture of validation's two class distributions that fits them best**,
pi F_pneumonia + (1 - pi) F_normal with pi in [0, 1] chosen to make D smallest (`mixture_ks`):
a folder of one class from the training hospital passes, a folder whose scores no share of
pneumonia explains does not. Fitting pi only lowers D, so the test warns less, never more.

The two classes differ in their images too, so where the reference holds each class's
statistics (`by_class`, stored by calibration) the folder's image statistics are compared
with the classes mixed at the share of pneumonia its scores were fitted with: a folder of
normal images alone is compared with validation's normal images, not with the pool.

Per-image statistics are used, not pixels: the pixels of one image are not independent
samples, so a pixel-level test would call every folder shifted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ALPHA",
    "MIN_EFFECT",
    "compare",
    "image_reference",
    "image_statistics",
    "kolmogorov_sf",
    "ks_2samp",
    "merge_statistics",
    "mixture_ks",
    "scoring_caveat",
    "scores_from_roc",
    "shift_figure",
    "warning_line",
    "write_shift",
]

FORMAT_VERSION = 1
ALPHA = 0.01  # p-value below which a difference counts as real
MIN_EFFECT = 0.2  # KS statistic D above which it counts as large enough to matter
BINS = 32  # intensity histogram bins over 0-255
DARK = 16  # pixel values below this count as near-black
MAX_VALUES = 2000  # per-image values kept in a reference (rank-spaced beyond)
IMAGE_QUANTITIES = {
    "mean": "mean intensity per image",
    "std": "intensity std per image",
    "dark": "share of near-black pixels per image",
}


# ---- the two-sample test ------------------------------------------------------------------
def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) of the Kolmogorov distribution: 2 sum_{j>=1} (-1)^(j-1) exp(-2 j^2 lam^2)."""
    if lam <= 0:
        return 1.0
    if lam < 0.2:  # the alternating series converges slowly here; the value is 1 to 1e-40
        return 1.0
    total = 0.0
    for j in range(1, 101):
        term = math.exp(-2 * j * j * lam * lam)
        total += term if j % 2 else -term
        if term < 1e-16:
            break
    return float(min(1.0, max(0.0, 2 * total)))


def _ecdf_gap(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray) -> float:
    grid = np.union1d(a, b)
    oa, ob = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
    ca = np.concatenate([[0.0], np.cumsum(wa[oa])]) / wa.sum()
    cb = np.concatenate([[0.0], np.cumsum(wb[ob])]) / wb.sum()
    fa = ca[np.searchsorted(a[oa], grid, side="right")]
    fb = cb[np.searchsorted(b[ob], grid, side="right")]
    return float(np.max(np.abs(fa - fb)))


def ks_2samp(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    weights_a: Sequence[float] | np.ndarray | None = None,
) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov-Smirnov test: (D, p). D is the largest gap between the
    empirical distribution functions; p is asymptotic, the Kolmogorov distribution at
    (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) * D with ne = n_a n_b / (n_a + n_b) (Stephens' small-
    sample correction, as in Numerical Recipes). `weights_a`: counts of `a`'s values (a
    reference stored as distinct values and their counts); n_a is then their sum."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    wa = np.ones_like(a) if weights_a is None else np.asarray(weights_a, dtype=np.float64).ravel()
    if len(wa) != len(a):
        raise ValueError("weights_a must have one count per value of a")
    keep = np.isfinite(a) & (wa > 0)
    a, wa = a[keep], wa[keep]
    b = b[np.isfinite(b)]
    if not len(a) or not len(b):
        raise ValueError("ks_2samp needs at least one finite value in each sample")
    wb = np.ones_like(b)
    d = _ecdf_gap(a, wa, b, wb)
    return d, _ks_p_value(d, float(wa.sum()), float(len(b)))


def _ks_p_value(d: float, na: float, nb: float) -> float:
    """The asymptotic two-sample p-value of D with Stephens' small-sample correction."""
    root = math.sqrt(na * nb / (na + nb))
    return kolmogorov_sf((root + 0.12 + 0.11 / root) * d)


def mixture_ks(
    values: Sequence[float] | np.ndarray,
    counts_normal: Sequence[float] | np.ndarray,
    counts_pneumonia: Sequence[float] | np.ndarray,
    sample: Sequence[float] | np.ndarray,
    steps: int = 200,
) -> tuple[float, float, float]:
    """The KS test of `sample` against the best-fitting mixture of two reference
    distributions (distinct `values` with the counts of each class): (D, p, pi), pi the
    share of the second (pneumonia) component that minimises D, searched on a grid of
    `steps` + 1 points in [0, 1]. p is the two-sample asymptotic p-value at that D, with the
    reference's total count (conservative: pi was fitted to make D small)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    w0 = np.asarray(counts_normal, dtype=np.float64).ravel()
    w1 = np.asarray(counts_pneumonia, dtype=np.float64).ravel()
    b = np.sort(np.asarray(sample, dtype=np.float64).ravel())
    b = b[np.isfinite(b)]
    if not len(b) or w0.sum() <= 0 or w1.sum() <= 0:
        raise ValueError("mixture_ks needs a sample and reference counts of both classes")
    order = np.argsort(v, kind="stable")
    v, w0, w1 = v[order], w0[order], w1[order]
    grid = np.union1d(v, b)
    at = np.searchsorted(v, grid, side="right")
    f0 = np.concatenate([[0.0], np.cumsum(w0)])[at] / w0.sum()
    f1 = np.concatenate([[0.0], np.cumsum(w1)])[at] / w1.sum()
    fb = np.searchsorted(b, grid, side="right") / len(b)
    pis = np.linspace(0.0, 1.0, steps + 1)
    gaps = np.abs(fb[None, :] - (pis[:, None] * f1[None, :] + (1 - pis[:, None]) * f0[None, :])).max(1)
    best = int(np.argmin(gaps))
    d = float(gaps[best])
    return d, _ks_p_value(d, float(w0.sum() + w1.sum()), float(len(b))), float(pis[best])


# ---- the reference and a folder's statistics ------------------------------------------------
def image_statistics(images: Any) -> dict[str, np.ndarray]:
    """Per image of uint8 (N, C, S, S) images (a numpy array or a torch tensor): `mean`,
    `std` (0-255) and `dark` (share of pixels below `DARK`); `histogram`: the pooled pixel
    counts in `BINS` bins over 0-255."""
    x = np.asarray(images.numpy() if hasattr(images, "numpy") else images)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"image_statistics wants uint8 (N, C, S, S) images, got {x.dtype} {x.shape}")
    flat = x.reshape(len(x), -1)
    hist = (
        np.bincount((flat.ravel() // (256 // BINS)).astype(np.int64), minlength=BINS)[:BINS]
        if flat.size
        else np.zeros(BINS, dtype=np.int64)
    )
    f = flat.astype(np.float32)
    return {
        "mean": f.mean(1) if len(f) else np.zeros(0),
        "std": f.std(1) if len(f) else np.zeros(0),
        "dark": (flat < DARK).mean(1) if len(f) else np.zeros(0),
        "histogram": hist,
    }


def merge_statistics(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`image_statistics` of several batches as one (predict.py gathers them batch by batch)."""
    if not parts:
        return image_statistics(np.zeros((0, 1, 1, 1), dtype=np.uint8))
    merged = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in IMAGE_QUANTITIES}
    merged["histogram"] = np.sum([np.asarray(p["histogram"]) for p in parts], axis=0)
    return merged


def _statistics(images: Any) -> dict[str, np.ndarray]:
    return dict(images) if isinstance(images, Mapping) else image_statistics(images)


def _spaced(values: np.ndarray, limit: int = MAX_VALUES) -> list[float]:
    values = np.sort(np.asarray(values, dtype=np.float64))
    if len(values) > limit:
        values = values[np.linspace(0, len(values) - 1, limit).round().astype(int)]
    return [round(float(v), 4) for v in values]


def image_reference(images: Any, labels: Any | None = None) -> dict[str, Any]:
    """What calibration stores in the checkpoint (`shift_reference`) from the decoded uint8
    validation images: plain lists and numbers only (checkpoints load with weights_only).
    With `labels` (0 normal, 1 pneumonia) of both classes, also each class's per-image
    statistics (`by_class`), so a folder is compared with the same mix of the two classes as
    its scores (a folder of one class differs from the pooled reference without any shift)."""
    stats = image_statistics(images)
    hist = stats["histogram"].astype(np.float64)
    ref: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "source": "validation split",
        "n_images": int(len(stats["mean"])),
        **{k: _spaced(stats[k]) for k in IMAGE_QUANTITIES},
        "histogram": [round(float(v), 6) for v in hist / max(hist.sum(), 1.0)],
        "bins": BINS,
        "dark_below": DARK,
    }
    if labels is not None:
        y = np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels).ravel()
        if len(y) != len(stats["mean"]):
            raise ValueError(f"image_reference: {len(y)} labels for {len(stats['mean'])} images")
        if (y == 0).any() and (y == 1).any():
            ref["by_class"] = {
                name: {"n_images": int((y == cls).sum()), **{k: _spaced(stats[k][y == cls]) for k in IMAGE_QUANTITIES}}
                for cls, name in ((0, "normal"), (1, "pneumonia"))
            }
    return ref


def _class_mixture(image_ref: Mapping[str, Any], key: str, share: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The reference values of `key` of both classes and their weights, mixed at `share` of
    pneumonia (weights summing to the reference's image count); None without usable
    per-class statistics."""
    by_class = image_ref.get("by_class")
    if not isinstance(by_class, Mapping):
        return None
    parts = []
    for name, weight in (("normal", 1.0 - share), ("pneumonia", share)):
        part = by_class.get(name)
        values = part.get(key) if isinstance(part, Mapping) else None
        n = part.get("n_images") if isinstance(part, Mapping) else None
        if not _finite_list(values) or isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            return None
        parts.append((np.asarray(values, dtype=np.float64), weight, n))
    total = sum(n for _, _, n in parts)
    values = np.concatenate([v for v, _, _ in parts])
    weights = np.concatenate([np.full(len(v), w * total / len(v)) for v, w, _ in parts])
    return values, weights


def scores_from_roc(val_roc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The validation scores behind a stored validation ROC (`evaluation.threshold.roc_points`):
    {"values", "counts", "counts_normal", "counts_pneumonia"} (values ascending); None
    without a usable ROC."""
    if not isinstance(val_roc, Mapping):
        return None
    try:
        t = np.asarray(val_roc["thresholds"], dtype=np.float64)
        sens = np.asarray(val_roc["sensitivity"], dtype=np.float64)
        spec = np.asarray(val_roc["specificity"], dtype=np.float64)
        n_pos, n_neg = int(val_roc["n_pneumonia"]), int(val_roc["n_normal"])
    except (KeyError, TypeError, ValueError):
        return None
    if not len(t) or not (len(t) == len(sens) == len(spec)) or n_pos + n_neg <= 0:
        return None
    pos_ge = np.round(sens * n_pos)  # pneumonia images scoring >= each threshold
    neg_ge = np.round((1 - spec) * n_neg)  # normal images scoring >= each threshold
    pos = pos_ge - np.append(pos_ge[1:], 0)
    neg = neg_ge - np.append(neg_ge[1:], 0)
    # below the lowest stored threshold (a rank-spaced ROC): put the rest at the lowest value
    pos[0] += n_pos - pos_ge[0]
    neg[0] += n_neg - neg_ge[0]
    pos, neg = np.clip(pos, 0, None), np.clip(neg, 0, None)
    return {
        "values": t.tolist(),
        "counts": (pos + neg).tolist(),
        "counts_normal": neg.tolist(),
        "counts_pneumonia": pos.tolist(),
    }


def _test(
    name: str,
    label: str,
    ref: np.ndarray,
    cur: np.ndarray,
    weights: np.ndarray | None = None,
    alpha: float = ALPHA,
    min_effect: float = MIN_EFFECT,
) -> dict[str, Any]:
    d, p = ks_2samp(ref, cur, weights)
    n_ref = int(round(float(np.sum(weights)))) if weights is not None else len(ref)
    ref_w = np.ones_like(ref) if weights is None else np.asarray(weights, dtype=np.float64)
    return {
        "name": name,
        "what": label,
        "statistic": round(d, 4),
        "p_value": p,
        "n_reference": n_ref,
        "n": int(len(cur)),
        "reference_median": _weighted_median(ref, ref_w),
        "median": float(np.median(cur)),
        "shifted": bool(p < alpha and d > min_effect),
    }


def _score_test(scores: Mapping[str, Any], probs: np.ndarray, alpha: float, min_effect: float) -> dict[str, Any]:
    """The scores against validation's best-fitting mixture of its two classes (`mixture_ks`)."""
    values = np.asarray(scores["values"], dtype=np.float64)
    w0, w1 = np.asarray(scores["counts_normal"], dtype=np.float64), np.asarray(scores["counts_pneumonia"])
    d, p, pi = mixture_ks(values, w0, w1, probs)
    weights = pi * w1 / w1.sum() + (1 - pi) * w0 / w0.sum()
    return {
        "name": "scores",
        "what": f"P(pneumonia), against validation's classes mixed at the best-fitting share of pneumonia {pi:.2f}",
        "statistic": round(d, 4),
        "p_value": p,
        "n_reference": int(round(float(w0.sum() + w1.sum()))),
        "n": int(len(probs)),
        "reference_median": _weighted_median(values, weights),
        "median": float(np.median(probs)),
        "pneumonia_share": round(pi, 3),
        "shifted": bool(p < alpha and d > min_effect),
    }


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])


def compare(
    probs: Any,
    images: Any | None,
    *,
    val_roc: Mapping[str, Any] | None,
    image_ref: Mapping[str, Any] | None,
    labels: Any | None = None,
    alpha: float = ALPHA,
    min_effect: float = MIN_EFFECT,
) -> dict[str, Any]:
    """A folder's scores (`probs`, (N,)) and decoded uint8 images (or their `image_statistics`;
    None: scores only) against
    the checkpoint's reference. Returns {"available", "tests": [...], "shifted", "warning",
    "alpha", "min_effect", "note", ...}; each test: name, what, statistic (D), p_value,
    n_reference, n, medians, shifted. With `labels` (eval), also the scores of each class
    against that class on validation (information, not part of the warning)."""
    probs = np.asarray(probs.numpy() if hasattr(probs, "numpy") else probs, dtype=np.float64).ravel()
    result: dict[str, Any] = {
        "alpha": alpha,
        "min_effect": min_effect,
        "tests": [],
        "by_class": [],
        "test": "two-sample Kolmogorov-Smirnov, asymptotic p-value",
        "reference": "the checkpoint's validation split",
        "n": int(len(probs)),
    }
    scores = scores_from_roc(val_roc)
    if scores is not None and len(probs):
        values = np.asarray(scores["values"])
        if sum(scores["counts_normal"]) > 0 and sum(scores["counts_pneumonia"]) > 0:
            result["tests"].append(_score_test(scores, probs, alpha, min_effect))
        else:  # a reference of one class: no mixture to fit
            result["tests"].append(
                _test("scores", "P(pneumonia)", values, probs, np.asarray(scores["counts"]), alpha, min_effect)
            )
        if labels is not None:
            y = np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels).ravel()
            for cls, key in ((0, "counts_normal"), (1, "counts_pneumonia")):
                w = np.asarray(scores[key])
                if (y == cls).any() and w.sum() > 0:
                    result["by_class"].append(
                        _test(
                            "scores_" + ("normal" if cls == 0 else "pneumonia"),
                            f"P(pneumonia) of {'NORMAL' if cls == 0 else 'PNEUMONIA'} images",
                            values,
                            probs[y == cls],
                            w,
                            alpha,
                            min_effect,
                        )
                    )
    unreadable = image_ref is not None and not _usable(image_ref)
    if unreadable:
        image_ref = None
    current = None
    if images is not None and image_ref and len(probs):
        current = _statistics(images)
        # the folder's share of pneumonia, as its scores were fitted (one fact for every test)
        share = next((t["pneumonia_share"] for t in result["tests"] if "pneumonia_share" in t), None)
        for key, label in IMAGE_QUANTITIES.items():
            mixed = _class_mixture(image_ref, key, share) if share is not None else None
            if mixed is not None:
                test = _test(key, label, mixed[0], current[key], mixed[1], alpha, min_effect)
                test["what"] = f"{label}, against validation's classes mixed at the scores' share of pneumonia"
                result["tests"].append(test)
                continue
            ref = np.asarray(image_ref.get(key) or [], dtype=np.float64)
            if len(ref):
                result["tests"].append(_test(key, label, ref, current[key], None, alpha, min_effect))
        hist = current["histogram"].astype(np.float64)
        result["histogram"] = (hist / max(hist.sum(), 1.0)).tolist()
        result["reference_histogram"] = list(image_ref.get("histogram") or [])
    result["available"] = bool(result["tests"])
    result["images_compared"] = current is not None
    if not result["available"]:
        result["note"] = (
            "no reference in this checkpoint (it was never calibrated)" if scores is None else "no images to compare"
        )
    elif current is None:
        result["note"] = (
            "scores only: the image statistics stored in this checkpoint are not readable"
            if unreadable
            else "scores only: this checkpoint stores no image statistics (calibrated before they were "
            "stored; python -m pneumonia.tools.calibrate CKPT adds them)"
            if not image_ref
            else "scores only"
        )
    shifted = [t for t in result["tests"] if t["shifted"]]
    result["shifted"] = bool(shifted)
    result["warning"] = warning_line(shifted, len(probs), alpha, min_effect) if shifted else None
    return result


def _finite_list(values: Any) -> bool:
    return (
        isinstance(values, (list, tuple))
        and bool(values)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    )


def _usable(image_ref: Any) -> bool:
    """Whether a stored image reference has the lists `compare` reads (finite numbers)."""
    if not isinstance(image_ref, Mapping):
        return False
    for key in IMAGE_QUANTITIES:
        if not _finite_list(image_ref.get(key)):
            return False
    hist = image_ref.get("histogram")
    return isinstance(hist, (list, tuple)) and all(isinstance(v, (int, float)) for v in hist)


def warning_line(
    shifted: Sequence[Mapping[str, Any]], n: int, alpha: float = ALPHA, min_effect: float = MIN_EFFECT
) -> str:
    """One plain line naming what differs from the training hospital."""
    # each test's short name (its `what` goes on to say what it was compared with)
    parts = [
        f"{IMAGE_QUANTITIES.get(t['name'], 'P(pneumonia)')} (KS D={t['statistic']:.2f}, p={t['p_value']:.1e})"
        for t in shifted
    ]
    why = " (the scores: whatever the share of pneumonia)" if any(t["name"] == "scores" for t in shifted) else ""
    return (
        f"warning: these {n} images do not look like the training hospital's: {'; '.join(parts)} differ from "
        f"the validation split{why} (p < {alpha:g} and D > {min_effect:g}); the stored threshold and the "
        f"validation metrics may not hold here"
    )


# ---- the figure ---------------------------------------------------------------------------
def shift_figure(
    probs: Any,
    images: Any | None,
    *,
    val_roc: Mapping[str, Any] | None,
    image_ref: Mapping[str, Any] | None,
    result: Mapping[str, Any],
) -> Any:
    """Empirical distribution functions of the scores and of the per-image statistics, the
    folder against the validation split, and the pooled intensity histograms, for the same
    inputs as `compare` gave `result` (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    probs = np.asarray(probs.numpy() if hasattr(probs, "numpy") else probs, dtype=np.float64).ravel()
    tests = {t["name"]: t for t in result.get("tests", [])}
    scores = scores_from_roc(val_roc)
    current = _statistics(images) if images is not None and image_ref else None
    panels: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]] = []
    if scores is not None and "scores" in tests:
        panels.append(("scores", np.asarray(scores["values"]), np.asarray(scores["counts"], dtype=np.float64), probs))
    if current is not None and image_ref:
        for key in IMAGE_QUANTITIES:
            if key in tests:
                panels.append((key, np.asarray(image_ref[key], dtype=np.float64), None, current[key]))
    with_hist = current is not None and bool(image_ref and image_ref.get("histogram"))
    n = max(1, len(panels) + with_hist)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.2), squeeze=False)
    for ax, (key, ref, weights, cur) in zip(axes[0], panels):
        t = tests[key]
        _ecdf(ax, ref, weights, "validation (training hospital)")
        _ecdf(ax, cur, None, "this folder")
        ax.set_title(f"{t['what']}\nD={t['statistic']:.2f}, p={t['p_value']:.1e}", fontsize=9)
        ax.set_ylabel("cumulative share")
        ax.legend(fontsize=7, loc="lower right")
    if with_hist:
        assert image_ref is not None and current is not None  # with_hist says both are there
        ax = axes[0][len(panels)]
        ref = np.asarray(image_ref["histogram"], dtype=np.float64)
        hist = current["histogram"].astype(np.float64)
        edges = np.arange(len(ref)) * (256 / len(ref))
        ax.step(edges, ref, where="post", label="validation (training hospital)")
        ax.step(edges, hist / max(hist.sum(), 1.0), where="post", label="this folder")
        ax.set_title("pixel intensities (pooled)", fontsize=9)
        ax.set_xlabel("intensity (0-255)")
        ax.set_ylabel("share of pixels")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _ecdf(ax: Any, values: np.ndarray, weights: np.ndarray | None, label: str) -> None:
    if not len(values):
        return
    order = np.argsort(values)
    w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
    cum = np.cumsum(w[order]) / w.sum()
    ax.step(np.asarray(values)[order], cum, where="post", label=label)


def write_shift(
    out_dir: Any,
    probs: Any,
    images: Any | None,
    *,
    val_roc: Mapping[str, Any] | None,
    image_ref: Mapping[str, Any] | None,
    labels: Any | None = None,
    caveat: str | None = None,
) -> dict[str, Any]:
    """`compare`, then shift.json and (when there is something to compare) shift.png in
    `out_dir`; returns the result (with "figure": the PNG's name or None, and `caveat`: why
    the scores may differ from validation's for another reason, e.g. TTA turned off)."""
    import json
    from pathlib import Path

    out_dir = Path(out_dir)
    result = compare(probs, images, val_roc=val_roc, image_ref=image_ref, labels=labels)
    image_ref = image_ref if image_ref is not None and _usable(image_ref) else None
    result["caveat"] = caveat
    result["figure"] = None
    if result["available"]:
        import matplotlib.pyplot as plt

        fig = shift_figure(probs, images, val_roc=val_roc, image_ref=image_ref, result=result)
        fig.savefig(out_dir / "shift.png", dpi=100)
        plt.close(fig)
        result["figure"] = "shift.png"
    (out_dir / "shift.json").write_text(json.dumps(result, indent=2))
    return result


def scoring_caveat(*, tta: bool, stored_tta: bool, temperature: float, stored_temperature: float) -> str | None:
    """Why the scores compared may differ from the validation scores other than by the images:
    scoring settings that differ from those the validation scores were computed with."""
    parts = []
    if tta != stored_tta:
        parts.append(f"TTA {'on' if tta else 'off'} here, {'on' if stored_tta else 'off'} on validation")
    if not math.isclose(temperature, stored_temperature, rel_tol=1e-6):
        parts.append(f"temperature {temperature:g} here, {stored_temperature:g} on validation")
    return ("the scores were computed differently from validation's (" + "; ".join(parts) + ")") if parts else None
