"""Inference: the checkpoint format and the `Predictor` that turns a checkpoint into a
ready scoring model. Light on purpose: no Lightning, matplotlib or TensorBoard."""

from pneumonia.inference.predictor import Predictor, resolve_precision

__all__ = ["Predictor", "resolve_precision"]
