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


def roc_figure(probs: torch.Tensor, labels: torch.Tensor, auroc: float) -> plt.Figure:
    fpr, tpr, _ = binary_roc(probs.float(), labels.long())
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot(fpr.numpy(), tpr.numpy(), label=f"AUROC {auroc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_title("ROC curve")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def pr_figure(probs: torch.Tensor, labels: torch.Tensor) -> plt.Figure:
    precision, recall, _ = binary_precision_recall_curve(probs.float(), labels.long())
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot(recall.numpy(), precision.numpy())
    ax.axhline(labels.float().mean().item(), ls="--", c="grey", lw=0.8, label="chance")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall curve")
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig
