"""Knowledge distillation (`distill.teacher`): a trained model (typically the ensemble of
several seeds, `python -m pneumonia.tools.ensemble`) teaches one network of the usual cost.

    python train.py experiment=best distill.teacher=outputs/ensemble/<time> distill.weight=0.5

Each training batch, as augmented, is scored by the teacher (eval mode, no TTA, its stored
precision), and the student fits (1 - weight) * label + weight * P_teacher
(`PneumoniaClassifier.targets`). The teacher is read through the `Predictor`, as every scoring
path reads a checkpoint; its preprocessing preset must be the student's (same image size,
channels and normalisation), or the run stops before decoding with one line. Validation,
the checkpoint choice and the threshold are the student's own, on the validation split: the
teacher's members must not have trained on it (the same `data.split_seed`, the default).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig

from pneumonia.data.preprocess import Preprocess
from pneumonia.errors import ConfigError

log = logging.getLogger(__name__)


def distill_weight(cfg: DictConfig) -> float:
    """`distill.weight` when a teacher is named, else 0 (off); checked to lie in (0, 1]."""
    settings = cfg.get("distill") or {}
    if not settings.get("teacher"):
        return 0.0
    weight = settings.get("weight", 0.5)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1:
        raise ConfigError(f"distill.weight={weight!r} must be a number in (0, 1]")
    return float(weight)


def teacher_path(teacher: str | Path) -> Path:
    """A checkpoint file, or a run folder holding checkpoints/best.ckpt."""
    path = Path(teacher)
    if path.is_dir():
        path = path / "checkpoints" / "best.ckpt"
    if not path.is_file():
        raise ConfigError(f"distill.teacher={teacher}: no such checkpoint (give a .ckpt or a run folder)")
    return path


def load_teacher(cfg: DictConfig, preprocess: Preprocess) -> Callable[[torch.Tensor], torch.Tensor]:
    """The teacher's logits for a batch of model inputs, on the teacher's device, without
    TTA (one forward per member: TTA's 7 would make training several times slower)."""
    from pneumonia.inference.predictor import Predictor

    path = teacher_path(cfg.distill.teacher)
    # threshold given: the teacher's own (chosen with its TTA) is not used here
    predictor = Predictor.from_checkpoint(path, device="auto", tta=False, threshold=0.5)
    theirs, ours = predictor.preprocess.describe(), preprocess.describe()
    differ = [k for k in ("image_size", "channels", "normalize") if theirs.get(k) != ours.get(k)]
    if differ:
        raise ConfigError(
            f"distill.teacher={cfg.distill.teacher} was trained on other inputs than this run: "
            + ", ".join(f"{k} {theirs.get(k)} (teacher) vs {ours.get(k)}" for k in differ)
        )
    log.info("Distilling from %s (weight %.2f, no TTA)", path, float(cfg.distill.weight))
    return predictor.logits
