"""Pneumonia detection in pediatric chest X-rays with PyTorch Lightning and Hydra."""

CLASSES = ("NORMAL", "PNEUMONIA")  # index 1 (PNEUMONIA) is the positive class everywhere

__version__ = "0.1.0"
