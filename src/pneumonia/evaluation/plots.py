"""Figures for TensorBoard and eval.py: confusion matrix, ROC and precision-recall curves with
operating points, reliability diagram."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI without a display

from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc  # noqa: E402

from pneumonia import CLASSES  # noqa: E402


def confusion_matrix_figure(confmat: torch.Tensor, title: str = "Confusion matrix") -> plt.Figure:
    cm = confmat.detach().cpu().long()
    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=100)
    ax.imshow(cm.numpy(), cmap="Blues")
    for (i, j), v in [((i, j), int(cm[i, j])) for i in range(2) for j in range(2)]:
        ax.text(
            j, i, str(v), ha="center", va="center", color="white" if v > cm.max().item() / 2 else "black", fontsize=12
        )
    ax.set_xticks([0, 1], CLASSES)
    ax.set_yticks([0, 1], CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


# (x, y, label) of an operating point to mark on a curve; the first is the chosen threshold
Point = tuple[float, float, str]
_MARKERS = ("o", "s", "^", "D", "v")


def _curve_figure(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    label: str | None,
    chance: tuple,
    xlabel: str,
    ylabel: str,
    title: str,
    legend_loc: str,
    points: Sequence[Point] = (),
) -> plt.Figure:
    """One curve plus its chance line (a diagonal for ROC, the prevalence for PR) and the
    operating `points`, the first (the chosen threshold) in red."""
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot(x.numpy(), y.numpy(), label=label)
    ax.plot(*chance, ls="--", c="grey", lw=0.8, label="chance")
    for i, (px, py, plabel) in enumerate(points):
        ax.plot(
            [px],
            [py],
            ls="none",
            marker=_MARKERS[i % len(_MARKERS)],
            ms=8 if i == 0 else 6,
            mfc="red" if i == 0 else "none",
            mec="red" if i == 0 else "black",
            label=plabel,
            zorder=3,
        )
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(loc=legend_loc, fontsize=7 if points else None)  # type: ignore[call-overload]  # matplotlib types loc as Literals
    fig.tight_layout()
    return fig


def roc_figure(probs: torch.Tensor, labels: torch.Tensor, auroc: float, points: Sequence[Point] = ()) -> plt.Figure:
    """ROC curve; `points` as (false positive rate, true positive rate, label)."""
    fpr, tpr, _ = binary_roc(probs.float(), labels.long())
    return _curve_figure(
        fpr,
        tpr,
        label=f"AUROC {auroc:.3f}",
        chance=([0, 1], [0, 1]),
        xlabel="false positive rate (1 - specificity)",
        ylabel="true positive rate (recall)",
        title="ROC curve",
        legend_loc="lower right",
        points=points,
    )


def pr_figure(probs: torch.Tensor, labels: torch.Tensor, points: Sequence[Point] = ()) -> plt.Figure:
    """Precision-recall curve; `points` as (recall, precision, label)."""
    precision, recall, _ = binary_precision_recall_curve(probs.float(), labels.long())
    prevalence = labels.float().mean().item()
    return _curve_figure(
        recall,
        precision,
        label=None,
        chance=([0, 1], [prevalence, prevalence]),
        xlabel="recall",
        ylabel="precision",
        title="Precision-recall curve",
        legend_loc="lower left",
        points=points,
    )


def operating_point_marks(rows: Sequence[dict], curve: str) -> list[Point]:
    """Marks for `roc_figure`/`pr_figure` from `analysis.operating_points` rows, the chosen
    threshold first."""
    ordered = sorted(rows, key=lambda r: r.get("target_sensitivity") is not None)
    marks = []
    for r in ordered:
        if r.get("sensitivity") is None:
            continue
        label = f"{r['name']} (t={r['threshold']:.3g})"
        if curve == "roc" and r.get("specificity") is not None:
            marks.append((1 - r["specificity"], r["sensitivity"], label))
        elif curve == "pr" and r.get("precision") is not None:
            marks.append((r["sensitivity"], r["precision"], label))
    return marks


def reliability_figure(
    probs: Any, labels: Any, bins: int = 15, probs_before: Any | None = None, title: str = "Reliability diagram"
) -> plt.Figure:
    """Observed fraction of pneumonia against mean P(pneumonia) in `bins` equal-width bins
    (the diagonal is perfect calibration), ECE in the legend, image counts per bin below;
    with `probs_before`, the same before temperature scaling, dashed."""
    from pneumonia.evaluation import statistics as st

    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(4.4, 5.2), dpi=100, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect calibration")
    series = [("after temperature" if probs_before is not None else "model", probs, "-", "C0")]
    if probs_before is not None:
        series.append(("before temperature", probs_before, ":", "C1"))
    for name, p, ls, color in series:
        r = st.reliability_bins(p, labels, bins)
        used = r["count"] > 0
        ece = st.expected_calibration_error(p, labels, bins)
        ax.plot(
            r["mean_probability"][used],
            r["fraction_positive"][used],
            ls=ls,
            marker="o",
            ms=4,
            c=color,
            label=f"{name}: ECE {ece:.3f}",
        )
    r = st.reliability_bins(probs, labels, bins)
    centers = (r["edges"][:-1] + r["edges"][1:]) / 2
    hist.bar(centers, r["count"], width=1 / bins * 0.9, color="C0")
    hist.set_yscale("symlog")
    hist.set(xlabel="P(pneumonia) (mean in bin)", ylabel="images")
    ax.set(ylabel="observed fraction of pneumonia", title=f"{title} ({bins} bins)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="best", fontsize=7, framealpha=0.85)
    fig.tight_layout()
    return fig
