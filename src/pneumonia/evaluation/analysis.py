"""Everything `metrics.json` holds beyond the point estimates: bootstrap intervals (by
patient), calibration, operating points, subgroups from the file names and a per-patient
view. Built from the probabilities, labels and file paths of one scored split, with the
pure functions of `statistics.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pneumonia.data.patients import patient_id, pneumonia_subtype
from pneumonia.evaluation import METRIC_NAMES
from pneumonia.evaluation import statistics as st

log = logging.getLogger(__name__)

SENSITIVITY_TARGETS = (0.90, 0.95, 0.99)
SUBTYPES: dict[str | None, str] = {"bacteria": "bacterial pneumonia", "virus": "viral pneumonia"}


# ---- names --------------------------------------------------------------------------------
def patient_groups(paths: Sequence[str]) -> tuple[list[str], bool]:
    """(patient id per file, whether any file name carried one). Unknown names are their
    own patient (`pneumonia.data.patients.patient_id`)."""
    ids = [patient_id(p) for p in paths]
    return ids, any(not i.startswith("file:") for i in ids)


def _clean(x: Any) -> Any:
    """NaN → None, numpy scalars → Python (JSON-ready)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if np.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


# ---- intervals ----------------------------------------------------------------------------
def intervals(
    probs: Any,
    labels: Any,
    threshold: float,
    paths: Sequence[str],
    *,
    resamples: int = st.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ci95 {metric: [lo, hi]}, a description of the bootstrap): percentile intervals of
    the six metrics over `resamples` resamples of the patients (of the images when the file
    names carry no patient ids)."""
    groups, known = patient_groups(paths)
    start = time.perf_counter()
    if resamples > 0:
        ci = st.bootstrap_ci(probs, labels, threshold, groups, n_resamples=resamples, seed=seed)
    else:
        ci = {m: None for m in METRIC_NAMES}
    seconds = time.perf_counter() - start
    meta = {
        "method": "percentile bootstrap",
        "level": 0.95,
        "resamples": int(resamples),
        "seed": int(seed),
        "unit": "patient" if known else "image",
        "units": len(set(groups)),
        "seconds": round(seconds, 3),
    }
    return _clean(ci), meta


def zero_width_bounds(rep: dict[str, Any], ci: dict[str, Any]) -> dict[str, Any]:
    """For a proportion observed at 1 (no error at all) or 0 whose bootstrap interval has
    zero width (no resample can contain an error that never happened), the exact two-sided
    95% Clopper-Pearson bound from its denominator n: [0.025^(1/n), 1] (or [0, 1 - that])."""
    denominators = {
        "accuracy": rep["tn"] + rep["fp"] + rep["fn"] + rep["tp"],
        "precision": rep["tp"] + rep["fp"],
        "recall": rep["tp"] + rep["fn"],
        "specificity": rep["tn"] + rep["fp"],
    }
    out = {}
    for metric, n in denominators.items():
        interval, value = ci.get(metric), rep.get(metric)
        if not interval or interval[0] != interval[1] or n == 0 or value not in (0.0, 1.0):
            continue
        edge = 0.025 ** (1 / n)
        out[metric] = {
            "n": int(n),
            "value": float(value),
            "exact_ci95": [edge, 1.0] if value == 1.0 else [0.0, 1 - edge],
        }
    return out


# ---- calibration --------------------------------------------------------------------------
def calibration_summary(
    probs: Any, labels: Any, *, bins: int = st.DEFAULT_BINS, temperature: float = 1.0, probs_before: Any | None = None
) -> dict[str, Any]:
    """ECE (equal-width bins) and Brier score of `probs`; with a temperature, the same of
    the probabilities before it (`probs_before`)."""
    out = {
        "bins": int(bins),
        "binning": "equal-width bins of P(pneumonia) on [0, 1]",
        "ece": st.expected_calibration_error(probs, labels, bins),
        "brier": st.brier_score(probs, labels),
        "temperature": float(temperature) if temperature != 1.0 else None,
    }
    if probs_before is not None and temperature != 1.0:
        out["before_temperature"] = {
            "ece": st.expected_calibration_error(probs_before, labels, bins),
            "brier": st.brier_score(probs_before, labels),
        }
    return _clean(out)


def probabilities_before_temperature(probs: Any, temperature: float) -> np.ndarray:
    """sigmoid(T * logit(p)): the probabilities a temperature-scaled model gave before its
    temperature, recovered from float32 probabilities (exact up to their rounding)."""
    return st.sigmoid(float(temperature) * st.logit(probs, eps=1e-7))


# ---- operating points ---------------------------------------------------------------------
def _point(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    pred = probs >= threshold
    pos = labels == 1
    tp, fp = int((pred & pos).sum()), int((pred & ~pos).sum())
    fn, tn = int((~pred & pos).sum()), int((~pred & ~pos).sum())
    rates = st.confusion_rates(tp, fp, fn, tn)
    return {
        "threshold": float(threshold),
        "sensitivity": rates["recall"],
        "specificity": rates["specificity"],
        "precision": rates["precision"],
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def operating_points(
    probs: Any, labels: Any, threshold: float, targets: Sequence[float] = SENSITIVITY_TARGETS
) -> list[dict[str, Any]]:
    """Rows of the operating-point table: for each target sensitivity, the highest threshold
    that keeps the sensitivity at or above it on these images (as `threshold.method=sensitivity`
    chooses it), with its specificity; then the chosen threshold's row."""
    import torch

    from pneumonia.evaluation.threshold import choose_threshold

    p, y = st._arr(probs), st._arr(labels, np.int64)
    rows = []
    if len(np.unique(y)) == 2:
        for target in targets:
            t = choose_threshold(torch.as_tensor(p), torch.as_tensor(y), "sensitivity", target_sensitivity=target)
            rows.append(
                {"name": f"sensitivity >= {target:.2f}", "target_sensitivity": float(target), **_point(p, y, t)}
            )
    rows.append({"name": "chosen threshold", "target_sensitivity": None, **_point(p, y, threshold)})
    return _clean(rows)


# ---- subgroups ----------------------------------------------------------------------------
def subgroups(
    probs: Any,
    labels: Any,
    threshold: float,
    paths: Sequence[str],
    *,
    resamples: int = st.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Recall of bacterial and viral pneumonia separately (from `_bacteria_` / `_virus_` in
    the file names) and the AUROC of each against all NORMAL images, with patient-bootstrap
    intervals. Says so when the names carry no subtype."""
    p, y = st._arr(probs), st._arr(labels, np.int64)
    kinds = [pneumonia_subtype(path) if label == 1 else None for path, label in zip(paths, y)]
    if not any(kinds):
        return {
            "available": False,
            "rows": [],
            "note": "The file names carry no pneumonia subtype (Kaggle's personN_bacteria_K / personN_virus_K): "
            "no bacterial / viral breakdown.",
        }
    groups, _ = patient_groups(paths)
    normal = y == 0
    rows = []
    for key in (*SUBTYPES, None):
        sel = np.array([label == 1 and k == key for label, k in zip(y, kinds)])
        if not sel.any():
            continue
        both = sel | normal
        g_sel = [groups[i] for i in np.flatnonzero(sel)]
        g_both = [groups[i] for i in np.flatnonzero(both)]
        recall = (
            st.bootstrap_ci(p[sel], y[sel], threshold, g_sel, n_resamples=resamples, seed=seed, metrics=("recall",))[
                "recall"
            ]
            if resamples
            else None
        )
        has_normal = bool(normal.any())
        auc_ci = (
            st.bootstrap_ci(p[both], y[both], threshold, g_both, n_resamples=resamples, seed=seed, metrics=("auroc",))[
                "auroc"
            ]
            if resamples and has_normal
            else None
        )
        rows.append(
            {
                "name": SUBTYPES.get(key, "pneumonia, subtype not in the file name"),
                "subtype": key,
                "images": int(sel.sum()),
                "patients": len(set(g_sel)),
                "recall": float((p[sel] >= threshold).mean()),
                "recall_ci95": recall,
                "missed": int((p[sel] < threshold).sum()),
                "auroc_vs_normal": st.auroc(p[both], y[both]) if has_normal else None,
                "auroc_vs_normal_ci95": auc_ci,
            }
        )
    return _clean(
        {
            "available": True,
            "rows": rows,
            "note": "Pneumonia images split by the subtype in their file names; recall at the chosen "
            "threshold; AUROC of each subtype against all NORMAL images.",
        }
    )


def per_patient(
    probs: Any,
    labels: Any,
    threshold: float,
    paths: Sequence[str],
    *,
    resamples: int = st.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics per patient: a patient is positive when any of its images is, its score is
    the highest probability of its images (so it is called PNEUMONIA when any image is)."""
    groups, known = patient_groups(paths)
    if not known:
        return {
            "available": False,
            "note": "The file names carry no patient ids (Kaggle's personN_... / IM-NNNN-...): every image "
            "counts as its own patient, so the per-patient view is the per-image one.",
        }
    p, y = st._arr(probs), st._arr(labels, np.int64)
    ids, codes = np.unique(np.asarray(groups), return_inverse=True)
    codes = codes.reshape(-1)
    score = np.full(len(ids), -np.inf)
    np.maximum.at(score, codes, p)
    label = np.zeros(len(ids), dtype=np.int64)
    np.maximum.at(label, codes, y)
    images = np.bincount(codes)
    point = st.point_metrics(score, label, threshold)
    pred = score >= threshold
    ci = (
        st.bootstrap_ci(score, label, threshold, None, n_resamples=resamples, seed=seed)
        if resamples
        else {m: None for m in METRIC_NAMES}
    )
    return _clean(
        {
            "available": True,
            "patients": len(ids),
            "positive": int(label.sum()),
            "negative": int((1 - label).sum()),
            "images_per_patient": {
                "mean": float(images.mean()),
                "max": int(images.max()),
                "with_several_images": int((images > 1).sum()),
            },
            **point,
            "tn": int((~pred & (label == 0)).sum()),
            "fp": int((pred & (label == 0)).sum()),
            "fn": int((~pred & (label == 1)).sum()),
            "tp": int((pred & (label == 1)).sum()),
            "ci95": ci,
            "rule": "a patient is PNEUMONIA when any of its images is (score = the highest probability of its images)",
        }
    )


# ---- all of it ----------------------------------------------------------------------------
def evaluation_summary(
    probs: Any,
    labels: Any,
    threshold: float,
    paths: Sequence[str],
    *,
    resamples: int = st.DEFAULT_RESAMPLES,
    seed: int = 0,
    bins: int = st.DEFAULT_BINS,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """metrics.json's sections after the point estimates: `ci95`, `bootstrap`, `calibration`,
    `operating_points`, `subgroups`, `per_patient`."""
    start = time.perf_counter()
    ci, meta = intervals(probs, labels, threshold, paths, resamples=resamples, seed=seed)
    p, y = st._arr(probs), st._arr(labels, np.int64)
    pred = p >= threshold
    counts = {
        "tp": int((pred & (y == 1)).sum()),
        "fp": int((pred & (y == 0)).sum()),
        "fn": int((~pred & (y == 1)).sum()),
        "tn": int((~pred & (y == 0)).sum()),
    }
    meta["zero_width"] = zero_width_bounds({**counts, **st.point_metrics(p, y, threshold)}, ci)
    before = probabilities_before_temperature(probs, temperature) if temperature != 1.0 else None
    out: dict[str, Any] = {
        "ci95": ci,
        "bootstrap": meta,
        "calibration": calibration_summary(probs, labels, bins=bins, temperature=temperature, probs_before=before),
        "operating_points": operating_points(probs, labels, threshold),
        "subgroups": subgroups(probs, labels, threshold, paths, resamples=resamples, seed=seed),
        "per_patient": per_patient(probs, labels, threshold, paths, resamples=resamples, seed=seed),
    }
    out["bootstrap"]["seconds_all_sections"] = round(time.perf_counter() - start, 3)
    log.info(
        "Bootstrap: %d resamples by %s in %.2f s (all sections %.2f s)",
        resamples,
        meta["unit"],
        meta["seconds"],
        out["bootstrap"]["seconds_all_sections"],
    )
    return out
