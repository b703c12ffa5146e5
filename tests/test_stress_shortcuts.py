"""The shortcut perturbations of stress validation (data/stress.py: composed, marker, border,
fov, apex, costophrenic) and the worst case over perturbations (evaluation/stress.py)."""

import re

import numpy as np
import pytest
import torch

from pneumonia.data.stress import (
    COMPOSED_AT_ONE,
    PERTURBATION_SETS,
    SHORTCUT_PERTURBATIONS,
    StressSettings,
    perturb,
)
from pneumonia.data.synthetic import _xray
from pneumonia.errors import ConfigError
from pneumonia.evaluation.stress import worst_case


def xrays(n: int = 6, size: int = 40, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([_xray(rng, (size, size), i % 2 == 1) for i in range(n)])[:, None])


def gray(n: int = 4, size: int = 40, value: int = 128) -> torch.Tensor:
    return torch.full((n, 1, size, size), value, dtype=torch.uint8)


@pytest.mark.parametrize("name", list(SHORTCUT_PERTURBATIONS))
def test_each_shortcut_perturbation_is_uint8_deterministic_and_changes_the_images(name):
    images = xrays()
    strength = SHORTCUT_PERTURBATIONS[name]
    out = perturb(images, name, strength, seed=0)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, perturb(images, name, strength, seed=0))
    assert torch.equal(out, perturb(images, name, strength, seed=0, chunk=4))  # chunking never matters
    assert (out.float() - images.float()).abs().mean() > 0.5
    rgb = images.repeat(1, 3, 1, 1)
    assert perturb(rgb, name, strength).shape == rgb.shape and perturb(rgb, name, strength).dtype == torch.uint8
    assert perturb(images[:0], name, strength).shape == (0, 1, 40, 40)


def test_the_sets_and_their_settings():
    assert list(PERTURBATION_SETS["all"]) == [*PERTURBATION_SETS["standard"], *SHORTCUT_PERTURBATIONS]
    settings = StressSettings.from_config({"enabled": True, "perturbations": PERTURBATION_SETS["all"]})
    assert settings.names == tuple(PERTURBATION_SETS["all"])
    assert dict(settings.perturbations)["marker"] == 0.12


def test_composed_does_all_of_its_changes_at_once():
    images = xrays()
    out = perturb(images, "composed", 1.0).float()
    # darker (gamma > 1), softer edges than noise alone would give, and JPEG-blocky
    assert out.mean() < images.float().mean() - 3
    alone = perturb(images, "noise", COMPOSED_AT_ONE["noise"]).float()
    assert (out[..., 1:] - out[..., :-1]).abs().mean() < (alone[..., 1:] - alone[..., :-1]).abs().mean()
    # a larger strength changes more; the noise is seeded
    weak, strong = perturb(images, "composed", 0.5).float(), perturb(images, "composed", 2.0).float()
    assert (
        (weak - images.float()).abs().mean()
        < (out - images.float()).abs().mean()
        < (strong - images.float()).abs().mean()
    )
    assert not torch.equal(perturb(images, "composed", 1.0, seed=0), perturb(images, "composed", 1.0, seed=1))


def test_marker_burns_a_white_letter_into_one_corner():
    images = gray(8)
    out = perturb(images, "marker", 0.25, seed=0)
    changed = out != images
    assert (out >= images).all()  # only brightened (anti-aliased edges), up to white
    quarter = 20
    for img, ch in zip(out, changed):
        corners = [
            ch[0, :quarter, :quarter],
            ch[0, :quarter, quarter:],
            ch[0, quarter:, :quarter],
            ch[0, quarter:, quarter:],
        ]
        touched = [bool(c.any()) for c in corners]
        assert sum(touched) == 1  # one marker, in one corner
        assert (img[0] == 255).sum() >= 8  # a visible letter
        assert not ch[0, 10:30, 10:30].all()  # not a filled block in the middle
    # corners and letters are drawn per image from the seed
    assert not torch.equal(out, perturb(images, "marker", 0.25, seed=1))
    # a larger letter covers more
    assert (perturb(images, "marker", 0.4) == 255).sum() > (perturb(images, "marker", 0.1) == 255).sum()


def test_border_blacks_out_two_opposite_bands():
    images = gray(8, value=200)
    out = perturb(images, "border", 0.2, seed=0)
    black = out == 0
    for b in black[:, 0]:
        rows = b.all(1)
        cols = b.all(0)
        # 4 rows top and bottom, or 4 columns left and right: 20% of 40
        assert (rows[:4].all() and rows[-4:].all() and not rows[4:-4].any()) or (
            cols[:4].all() and cols[-4:].all() and not cols[4:-4].any()
        )
        assert (out[0, 0, 10:30, 10:30] == 200).all()
    assert (black.float().mean() - 0.2).abs() < 0.01


def test_fov_shrinks_the_image_into_a_black_frame():
    images = gray(2, value=200)
    out = perturb(images, "fov", 0.5)
    assert (out[:, :, 10:30, 10:30] == 200).all()
    assert (out[:, :, :10] == 0).all() and (out[:, :, 30:] == 0).all() and (out[..., :10] == 0).all()


def test_apex_and_costophrenic_cut_the_top_and_the_bottom():
    ramp = (torch.arange(40) * 6).to(torch.uint8).view(1, 1, 40, 1).expand(2, 1, 40, 40).contiguous()  # row value
    top_cut = perturb(ramp, "apex", 0.25).float()
    bottom_cut = perturb(ramp, "costophrenic", 0.25).float()
    # the first row now shows what was 25% down; the last row is kept (and the reverse for the bottom)
    assert top_cut[..., 0, :].mean() == pytest.approx(60, abs=4) and top_cut[..., -1, :].mean() > 225
    assert bottom_cut[..., 0, :].mean() < 4 and bottom_cut[..., -1, :].mean() == pytest.approx(174, abs=4)
    assert (top_cut[..., 1:, :] >= top_cut[..., :-1, :]).all() and (
        bottom_cut[..., 1:, :] >= bottom_cut[..., :-1, :]
    ).all()


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("composed", 0, "must be a number in (0, 2]"),
        ("composed", 3, "must be a number in (0, 2]"),
        ("marker", 0.6, "must be a number in (0, 0.5]"),
        ("border", 1.0, "must be a number in (0, 1)"),
        ("fov", 1.0, "must be a number in (0, 1)"),
        ("apex", 0.0, "must be a number in (0, 0.5]"),
        ("costophrenic", "bottom", "must be a number in (0, 0.5]"),
        ("marker", float("nan"), "must be a number in (0, 0.5]"),
    ],
)
def test_bad_strengths_are_one_line_errors(name, value, message):
    with pytest.raises(ConfigError, match=re.escape(f"data.stress.perturbations.{name}={value!r} {message}")):
        StressSettings.from_config({"perturbations": {name: value}})


def test_worst_case_is_the_minimum_over_perturbations():
    per = {
        "a": {"auroc": 0.99, "specificity": 0.80, "recall": 0.95},
        "b": {"auroc": 0.95, "specificity": 0.90, "recall": 0.97},
        "c": {"auroc": float("nan"), "specificity": 0.99, "recall": 0.90},
    }
    worst = worst_case(per)
    assert worst == {
        "auroc": 0.95,
        "auroc_perturbation": "b",
        "specificity": 0.80,
        "specificity_perturbation": "a",
        "sensitivity": 0.90,
        "sensitivity_perturbation": "c",
    }
    assert worst_case({})["auroc"] is None


def test_the_config_lists_the_shortcut_set_commented_with_its_strengths():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "conf" / "data" / "chest_xray.yaml").read_text()
    listed = dict(re.findall(r"^    # (\w+): ([0-9.]+)\s", text, flags=re.M))
    assert {k: float(v) for k, v in listed.items()} == SHORTCUT_PERTURBATIONS


def test_the_dicom_path_windows_12_bits_and_reads_monochrome1_back_upright():
    """`dicom`: each image through a 12-bit DICOM file and the project's reader; deterministic,
    MONOCHROME1 images come back upright (not inverted), a narrow window clips the tails and a
    window far wider than the image's range gives the image back."""
    pytest.importorskip("pydicom")
    x = xrays(8, 48)
    once = perturb(x, "dicom", 0.8, seed=3)
    assert once.dtype == torch.uint8 and once.shape == x.shape and torch.equal(once, perturb(x, "dicom", 0.8, seed=3))
    for a, b in zip(x.float(), once.float()):
        assert np.corrcoef(a.flatten(), b.flatten())[0, 1] > 0.9  # upright, MONOCHROME1 or not
    saturated = lambda t: ((t == 0) | (t == 255)).float().mean()  # noqa: E731
    assert saturated(perturb(x, "dicom", 0.5)) > saturated(x) + 0.05  # the window's tails clipped
    # a window wider than the image: the reader's min..max scaling alone, as for any DICOM it reads
    lo, hi = x.flatten(1).min(1).values.view(-1, 1, 1, 1).float(), x.flatten(1).max(1).values.view(-1, 1, 1, 1).float()
    stretched = (x.float() - lo) / (hi - lo) * 255
    assert (perturb(x, "dicom", 10).float() - stretched).abs().max() <= 3
    assert "dicom" in PERTURBATION_SETS["dicom"] and "dicom" not in PERTURBATION_SETS["all"]
