"""Distillation (`distill.teacher`): the targets mixed with a teacher's probabilities on the same
augmented batch, the loss that mixing gives, and the one-line errors for a teacher that is
missing or was trained on other inputs."""

import pytest
import torch
from torch import nn

from pneumonia.errors import ConfigError
from tests.helpers import logged_lines, train_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

NET = {"_target_": "pneumonia.models.CustomCNN", "depth": 2, "widths": [4, 8], "dense_units": 8, "in_channels": 1}


def module(weight: float):
    from pneumonia.models.classifier import PneumoniaClassifier

    return PneumoniaClassifier(net=NET, distill_weight=weight, pretrained=False)


def test_targets_mix_labels_and_the_teachers_probability_on_the_same_inputs():
    m = module(0.25)
    x = torch.rand(6, 1, 32, 32)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    seen = []
    teacher_logits = torch.tensor([2.0, -1.0, 0.0, 3.0, -2.0, 0.5])

    def teacher(inputs):
        seen.append(inputs)
        return teacher_logits

    m.teacher = teacher
    targets = m.targets("train", (x, y, torch.arange(6)))
    assert seen and seen[0] is x  # the batch as the student sees it
    expected = 0.75 * y.float() + 0.25 * torch.sigmoid(teacher_logits)
    torch.testing.assert_close(targets, expected)
    # BCE is linear in its target: the mixed target is the weighted sum of the two losses
    logits = torch.randn(6)
    bce = nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(
        bce(logits, targets), 0.75 * bce(logits, y.float()) + 0.25 * bce(logits, torch.sigmoid(teacher_logits))
    )
    # validation fits the labels alone, and the teacher is not a submodule (neither trained nor saved)
    torch.testing.assert_close(m.targets("val", (x, y, torch.arange(6))), y.float())
    assert not any(k.startswith("teacher") for k in m.state_dict())


def test_a_weight_without_a_teacher_stops_before_training():
    m = module(0.5)
    with pytest.raises(ConfigError, match="needs a teacher"):
        m.on_fit_start()


def test_weight_is_checked():
    from omegaconf import OmegaConf

    from pneumonia.runners.distill import distill_weight

    assert distill_weight(OmegaConf.create({"distill": {"teacher": None, "weight": 0.5}})) == 0.0
    assert distill_weight(OmegaConf.create({"distill": {"teacher": "a.ckpt", "weight": 1}})) == 1.0
    for bad in (0, 1.5, "half", True):
        with pytest.raises(ConfigError, match="distill.weight"):
            distill_weight(OmegaConf.create({"distill": {"teacher": "a.ckpt", "weight": bad}}))


@pytest.mark.slow
def test_a_student_trains_from_a_teacher_run_and_bad_teachers_are_one_line(xray_root, tiny_checkpoint, tmp_path):
    from pneumonia.inference.checkpoint import load_checkpoint, module_settings
    from pneumonia.runners.train import train

    teacher_run = tiny_checkpoint.parent.parent
    common = ["trainer.max_epochs=1", "logger=none", "callbacks.early_stopping=null", "intervals.resamples=0"]
    out = tmp_path / "student"
    with logged_lines("pneumonia.runners.distill") as lines:
        train(train_cfg(xray_root, out, *common, f"distill.teacher={teacher_run}", "distill.weight=0.5"))
    assert lines == [f"Distilling from {tiny_checkpoint} (weight 0.50, no TTA)"]
    assert module_settings(load_checkpoint(out / "checkpoints" / "best.ckpt"))["distill_weight"] == 0.5

    with pytest.raises(ConfigError, match="no such checkpoint"):
        train(train_cfg(xray_root, tmp_path / "a", *common, f"distill.teacher={tmp_path / 'nothing'}"))
    with pytest.raises(ConfigError, match=r"image_size 48 \(teacher\) vs 32"):
        train(train_cfg(xray_root, tmp_path / "b", *common, "data.image_size=32", f"distill.teacher={teacher_run}"))
    assert not (tmp_path / "b" / "cache").exists()  # refused before decoding
