"""The metrics reported everywhere, as torchmetrics (synced across DDP ranks on compute)."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
)

from pneumonia.evaluation import METRIC_NAMES, REPORT_KEYS

__all__ = ["METRIC_NAMES", "REPORT_KEYS", "classification_metrics", "report", "set_threshold", "split_confmat"]


def at_or_above(threshold: float) -> float:
    """The threshold to give torchmetrics so that it decides like the rest of the project.

    torchmetrics calls a probability positive when it is `> threshold`; the Predictor,
    predictions.csv and the ONNX backend call it PNEUMONIA when it is `>= threshold`. The
    float32 number just below `threshold` makes `>` mean `>=` for float32 probabilities
    (torchmetrics wants [0, 1], so a threshold of 0 stays 0)."""
    return max(0.0, float(np.nextafter(np.float32(threshold), np.float32(-np.inf))))


def classification_metrics(prefix: str = "", threshold: float = 0.5) -> MetricCollection:
    """All metrics take probabilities; AUROC is threshold-free, the rest call a probability
    PNEUMONIA when it is >= `threshold`."""
    threshold = at_or_above(threshold)
    metrics = {
        "accuracy": BinaryAccuracy(threshold=threshold),
        "precision": BinaryPrecision(threshold=threshold),
        "recall": BinaryRecall(threshold=threshold),
        "specificity": BinarySpecificity(threshold=threshold),
        "f1": BinaryF1Score(threshold=threshold),
        "auroc": BinaryAUROC(),
    }
    assert tuple(metrics) == METRIC_NAMES  # one list of names, kept in step with this collection
    return MetricCollection(
        {**metrics, "confmat": BinaryConfusionMatrix(threshold=threshold)}, prefix=prefix, compute_groups=False
    )


def set_threshold(metrics: MetricCollection, threshold: float) -> None:
    for metric in metrics.values():
        if hasattr(metric, "threshold"):
            metric.threshold = at_or_above(threshold)


def split_confmat(values: dict[str, torch.Tensor], prefix: str) -> tuple[dict[str, float], torch.Tensor]:
    """Scalar metrics as floats, plus the 2x2 confusion matrix [[tn, fp], [fn, tp]]."""
    confmat = values.pop(f"{prefix}confmat")
    return {k: float(v) for k, v in values.items()}, confmat


def report(probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """metrics.json's numbers for one set of predictions (single process)."""
    metrics = classification_metrics(threshold=threshold)
    scalars, confmat = split_confmat(metrics(probs.float(), labels.long()), "")
    (tn, fp), (fn, tp) = confmat.tolist()
    rep = {**scalars, "tn": tn, "fp": fp, "fn": fn, "tp": tp, "threshold": float(threshold), "n": len(labels)}
    return {k: rep[k] for k in REPORT_KEYS}
