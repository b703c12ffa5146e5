"""Figures for TensorBoard and eval.py: confusion matrix, ROC and precision-recall curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI without a display

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc  # noqa: E402

from pneumonia import CLASSES  # noqa: E402


def confusion_matrix_figure(confmat: torch.Tensor, title: str = "Confusion matrix") -> plt.Figure:
    cm = confmat.detach().cpu().long()
    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=100)
    ax.imshow(cm.numpy(), cmap="Blues")
    for (i, j), v in [((i, j), int(cm[i, j])) for i in range(2) for j in range(2)]:
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > cm.max().item() / 2 else "black", fontsize=12)
    ax.set_xticks([0, 1], CLASSES)
    ax.set_yticks([0, 1], CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _curve_figure(x: torch.Tensor, y: torch.Tensor, *, label: str | None, chance: tuple, xlabel: str,
                  ylabel: str, title: str, legend_loc: str) -> plt.Figure:
    """One curve plus its chance line (a diagonal for ROC, the prevalence for PR)."""
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot(x.numpy(), y.numpy(), label=label)
    ax.plot(*chance, ls="--", c="grey", lw=0.8, label="chance")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(loc=legend_loc)
    fig.tight_layout()
    return fig


def roc_figure(probs: torch.Tensor, labels: torch.Tensor, auroc: float) -> plt.Figure:
    fpr, tpr, _ = binary_roc(probs.float(), labels.long())
    return _curve_figure(fpr, tpr, label=f"AUROC {auroc:.3f}", chance=([0, 1], [0, 1]),
                         xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (recall)",
                         title="ROC curve", legend_loc="lower right")


def pr_figure(probs: torch.Tensor, labels: torch.Tensor) -> plt.Figure:
    precision, recall, _ = binary_precision_recall_curve(probs.float(), labels.long())
    prevalence = labels.float().mean().item()
    return _curve_figure(recall, precision, label=None, chance=([0, 1], [prevalence, prevalence]),
                         xlabel="recall", ylabel="precision", title="Precision-recall curve",
                         legend_loc="lower left")
