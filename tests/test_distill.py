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
    with pytest.raises(ConfigError, match="distill.weight > 0 needs a teacher"):
        m.on_fit_start()


def test_weight_is_checked():
    from omegaconf import OmegaConf

    from pneumonia.runners.distill import distill_weight

    assert distill_weight(OmegaConf.create({"distill": {"teacher": None, "weight": 0.5}})) == 0.0
    with pytest.raises(ConfigError, match="distill.weight"):  # checked with no teacher too
        distill_weight(OmegaConf.create({"distill": {"teacher": None, "weight": 2}}))
    assert distill_weight(OmegaConf.create({"distill": {"teacher": "a.ckpt", "weight": 1}})) == 1.0
    for bad in (0, 1.5, "half", True):
        with pytest.raises(ConfigError, match="distill.weight"):
            distill_weight(OmegaConf.create({"distill": {"teacher": "a.ckpt", "weight": bad}}))
    from pneumonia.runners.distill import teacher_path

    with pytest.raises(ConfigError, match="must be a checkpoint or run folder path"):
        teacher_path(5)


def test_bad_distill_settings_are_one_line_before_torch(tmp_path):
    from tests.helpers import run_cli

    result = run_cli("train.py", "distill.teacher=nowhere/x.ckpt", f"hydra.run.dir={tmp_path}/run")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == "error: distill.teacher=nowhere/x.ckpt: no such checkpoint (give a .ckpt or a run folder)"


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
    # another validation split: the student's validation images could be the teacher's training images
    with pytest.raises(ConfigError, match=r"data.split_seed 42 \(teacher\) vs 7"):
        train(train_cfg(xray_root, tmp_path / "c", *common, "data.split_seed=7", f"distill.teacher={teacher_run}"))
    with pytest.raises(ConfigError, match="cross-validation"):
        train(train_cfg(xray_root, tmp_path / "d", *common, "cv.folds=3", f"distill.teacher={teacher_run}"))
    # resuming a distilled run without its teacher would quietly stop distilling
    with pytest.raises(ConfigError, match="distill.weight=0.0"):
        train(train_cfg(xray_root, out, "trainer.max_epochs=2", *common[1:], f"resume={out}"))


def test_the_teacher_scores_on_the_batch_device_in_its_precision_and_is_shared_by_copies(tiny_checkpoint):
    import copy

    from pneumonia.inference.predictor import Predictor
    from pneumonia.runners.distill import Teacher

    predictor = Predictor.from_checkpoint(tiny_checkpoint, precision="32-true", tta=False)
    teacher = Teacher(predictor).to("cpu")
    x = torch.rand(4, 1, 48, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the student's bf16 step
        logits = teacher(x)
    assert logits.dtype == torch.float32 and not logits.is_inference() and not logits.requires_grad
    torch.testing.assert_close(logits, predictor.logits(x))  # fp32, as its precision says, not bf16
    # a target for a loss that goes backward (an inference-mode tensor could not be saved for it)
    student = torch.zeros(4, requires_grad=True)
    nn.functional.binary_cross_entropy_with_logits(student, torch.sigmoid(logits)).backward()
    assert copy.deepcopy(teacher) is teacher  # SWA's copy of the student shares it
