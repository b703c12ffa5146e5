"""Choosing the decision threshold on the validation split, after training.

A sigmoid output of 0.5 is the right cut only when train and deployment share a class
balance; the official test split has 37.5% normal images against 25.7% in train.
"""

from __future__ import annotations

import torch

from pneumonia.errors import ConfigError

METHODS = ("fixed", "max_f1", "youden", "sensitivity")


def choose_threshold(probs: torch.Tensor, labels: torch.Tensor, method: str = "youden",
                     value: float = 0.5, target_sensitivity: float = 0.95) -> float:
    """Threshold by `method`: `fixed` (= `value`), `max_f1`, `youden` (max sensitivity +
    specificity - 1) or `sensitivity` (the highest threshold keeping recall >= target)."""
    if method not in METHODS:
        raise ConfigError(f"threshold.method={method!r} must be one of {', '.join(METHODS)}")
    if method == "fixed":
        return float(value)
    probs, labels = probs.double().flatten(), labels.long().flatten()
    if labels.min() == labels.max():
        return float(value)  # one class only: nothing to choose from
    candidates = torch.unique(probs)
    pred = probs[None, :] >= candidates[:, None]  # (thresholds, samples)
    pos = labels.bool()[None, :]
    tp = (pred & pos).sum(1).double()
    fp = (pred & ~pos).sum(1).double()
    fn = (~pred & pos).sum(1).double()
    tn = (~pred & ~pos).sum(1).double()
    sens, spec = tp / (tp + fn), tn / (tn + fp)
    if method == "max_f1":
        i = int(torch.argmax(2 * tp / (2 * tp + fp + fn)))
    elif method == "youden":
        i = int(torch.argmax(sens + spec - 1))
    else:
        ok = torch.nonzero(sens >= target_sensitivity).flatten()
        i = int(ok.max()) if len(ok) else 0
    # every threshold in (candidates[i-1], candidates[i]] predicts the same; take the
    # middle of that gap rather than sitting on one validation image's probability
    low = float(candidates[i - 1]) if i > 0 else 0.0
    return (low + float(candidates[i])) / 2


def roc_points(probs: torch.Tensor, labels: torch.Tensor, max_points: int = 2000) -> dict[str, list[float]]:
    """Sensitivity and specificity at each distinct score used as the threshold (PNEUMONIA
    when probability >= threshold), thresholds ascending; at most `max_points` of them
    (evenly spaced in rank) so a large validation split keeps a small checkpoint. Stored in
    the checkpoint, so the app can show what any threshold meant on validation."""
    probs, labels = probs.double().flatten(), labels.long().flatten()
    thresholds = torch.unique(probs)
    if len(thresholds) > max_points:
        thresholds = thresholds[torch.linspace(0, len(thresholds) - 1, max_points).round().long()]
    pred = probs[None, :] >= thresholds[:, None]
    pos = labels.bool()[None, :]
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    sens = (pred & pos).sum(1).double() / max(n_pos, 1)
    spec = (~pred & ~pos).sum(1).double() / max(n_neg, 1)
    return {"thresholds": thresholds.tolist(), "sensitivity": sens.tolist(), "specificity": spec.tolist(),
            "n_pneumonia": n_pos, "n_normal": n_neg}
