"""Evaluation: the metrics, the decision threshold, calibration after training, figures.

The metric names live here (no torch import), so light tools such as `sweep_summary` share
the one list with the torchmetrics collection in `metrics.py`.
"""

# the metrics reported everywhere (TensorBoard, val_metrics.json, metrics.json, sweep tables)
METRIC_NAMES = ("accuracy", "precision", "recall", "specificity", "f1", "auroc")
# metrics.json: the metrics, then the confusion counts, the threshold and the image count
REPORT_KEYS = (*METRIC_NAMES, "tn", "fp", "fn", "tp", "threshold", "n")
