"""`numpy_report`: `pneumonia.evaluation.metrics.report` (metrics.json's numbers) in numpy,
for the torch-free ONNX backend of `predict.py`. Same keys, same conventions as the
torchmetrics collection (tested against it): PNEUMONIA (1) is the positive class, a ratio
with a zero denominator is 0, AUROC is the exact area under the ROC curve (ties count one
half; 0 with one class only). One difference: a probability exactly at the threshold is
PNEUMONIA here, as `Predictor.decide` and predictions.csv have it; torchmetrics counts it
as NORMAL (`preds > threshold`). Calibration puts thresholds between validation scores, so
such ties are rare."""

from __future__ import annotations

from typing import Any

import numpy as np

from pneumonia.evaluation import REPORT_KEYS

__all__ = ["auroc", "numpy_report"]


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def auroc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC through ranks (Mann-Whitney U, ties as one half); 0.0 with one class."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return 0.0
    order = np.argsort(probs, kind="mergesort")
    sorted_probs = probs[order]
    ranks = np.empty(len(probs), dtype=np.float64)
    # average rank (1-based) of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_probs[1:] != sorted_probs[:-1]])
    ends = np.r_[starts[1:], len(probs)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def numpy_report(probs: Any, labels: Any, threshold: float) -> dict[str, float]:
    """metrics.json's numbers for one set of predictions, computed with numpy."""
    probs = np.asarray(probs, dtype=np.float32)
    labels = np.asarray(labels).astype(np.int64)
    pred = probs >= np.float32(threshold)
    pos = labels == 1
    tp, fp = int((pred & pos).sum()), int((pred & ~pos).sum())
    fn, tn = int((~pred & pos).sum()), int((~pred & ~pos).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    rep = {"accuracy": _ratio(tp + tn, len(labels)), "precision": precision, "recall": recall,
           "specificity": _ratio(tn, tn + fp), "f1": _ratio(2 * tp, 2 * tp + fp + fn), "auroc": auroc(probs, labels),
           "tn": tn, "fp": fp, "fn": fn, "tp": tp, "threshold": float(threshold), "n": int(len(labels))}
    return {k: rep[k] for k in REPORT_KEYS}
