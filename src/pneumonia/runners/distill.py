"""Knowledge distillation (`distill.teacher`): a trained model (typically the ensemble of
several seeds, `python -m pneumonia.tools.ensemble`) teaches one network of the usual cost.

    python train.py experiment=best distill.teacher=outputs/ensemble/<time> distill.weight=0.5

Each training batch, as augmented, is scored by the teacher (eval mode, no TTA, its stored
precision), and the student fits (1 - weight) * label + weight * P_teacher
(`PneumoniaClassifier.targets`). The teacher is read through the `Predictor`, as every scoring
path reads a checkpoint; its preprocessing preset and validation split must be the student's,
or the run stops before decoding with one line. Validation, the checkpoint choice and the
threshold are the student's own, on the validation split, which the teacher never trained on.

The settings are checked without torch (`check_distill_settings`, before Hydra starts a job).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from pneumonia.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from pneumonia.inference.predictor import Predictor

log = logging.getLogger(__name__)


def distill_weight(cfg: DictConfig) -> float:
    """`distill.weight` when a teacher is named, else 0 (off); checked to lie in (0, 1] either
    way (a typo fails now, not when a teacher is added)."""
    settings = cfg.get("distill") or {}
    weight = settings.get("weight", 0.5)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1:
        raise ConfigError(f"distill.weight={weight!r} must be a number in (0, 1]")
    return float(weight) if settings.get("teacher") is not None else 0.0


def teacher_path(teacher: Any) -> Path:
    """A checkpoint file, or a run folder holding checkpoints/best.ckpt."""
    if not isinstance(teacher, str | Path):
        raise ConfigError(f"distill.teacher={teacher!r} must be a checkpoint or run folder path, or null (off)")
    path = Path(teacher).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "best.ckpt"
    if not path.is_file():
        raise ConfigError(f"distill.teacher={teacher}: no such checkpoint (give a .ckpt or a run folder)")
    return path


def check_distill_settings(cfg: DictConfig) -> None:
    """`distill.*` without torch: the weight, the teacher's file, and no cross-validation (each
    fold validates on images the teacher, trained on the usual split, learned)."""
    distill_weight(cfg)
    teacher = (cfg.get("distill") or {}).get("teacher")
    if teacher is None:
        return
    teacher_path(teacher)
    if (cfg.get("cv") or {}).get("folds") is not None or (cfg.get("data") or {}).get("folds") is not None:
        raise ConfigError(
            "distill.teacher with cross-validation (cv.folds / data.folds): each fold would validate on images "
            "the teacher trained on; distill a run on the usual validation split"
        )


class Teacher:
    """A teacher's logits for a batch of the student's inputs, on the batch's device, without
    gradients, in the precision its threshold was chosen under (autocast off for full
    precision, also inside the student's bf16 autocast). Moved with the student
    (`to`, at the start of fit); shared, not copied, by `copy.deepcopy` (the SWA callback copies
    the student: the teacher is never trained, and a copy would double its memory)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def to(self, device: torch.device | str) -> Teacher:
        import torch

        self.predictor.device = torch.device(device)
        self.predictor.net.to(self.predictor.device)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad():
            return self.predictor.device_logits(x)

    def __deepcopy__(self, memo: dict[int, Any]) -> Teacher:
        return self


def load_teacher(cfg: DictConfig) -> Teacher:
    """The run's teacher, on the CPU until the student's fit moves it to its device (a DDP
    rank's own GPU), checked against the run's preprocessing and validation split."""
    from pneumonia.inference.checkpoint import INPUT_KEYS, SPLIT_KEYS, data_setting
    from pneumonia.inference.predictor import Predictor

    path = teacher_path(cfg.distill.teacher)
    # threshold given: the teacher's own (chosen with its TTA) is not used here
    predictor = Predictor.from_checkpoint(path, device="cpu", tta=False, threshold=0.5)
    stored = predictor.data_settings
    differ = [
        f"data.{k} {data_setting(stored, k)} (teacher) vs {data_setting(cfg.data, k)}"
        for k in (*SPLIT_KEYS, *INPUT_KEYS)
        if k != "tta" and data_setting(stored, k) != data_setting(cfg.data, k)
    ]
    if differ:
        raise ConfigError(
            f"distill.teacher={cfg.distill.teacher} was trained on other inputs or another validation split "
            f"than this run: {', '.join(differ)}"
        )
    log.info("Distilling from %s (weight %.2f, no TTA)", path, float(cfg.distill.weight))
    return Teacher(predictor)
