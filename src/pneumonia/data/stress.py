"""Stress validation: the validation images again, under the acquisition changes a
different scanner, hospital or export pipeline brings (contrast and gamma, blur, noise, JPEG
re-compression, a lower resolution, a slightly different crop), and, in the second set
(`SHORTCUT_PERTURBATIONS`), what differs between hospitals and what a model could use as a
shortcut: all of those at once (`composed`), burnt-in side markers ("R"/"L" at a corner),
black bands of a collimator (`border`), a wider field of view (`fov`), and crops that cut the
lung apex (`apex`) or the costophrenic angles (`costophrenic`). The third set (`dicom`, needs
pydicom) sends each image through the DICOM path: stored as a 12-bit DICOM with a clinical
window, half of them MONOCHROME1, and read back by the project's own DICOM decoder.

Plain validation AUROC saturates (0.998 for every recipe of README "Results"); the same
images made harder tell recipes apart and show which ones rely on acquisition details.

- Training (`data.stress.enabled=true`): the DataModule builds the perturbed copies once,
  from the decoded uint8 validation images it already holds (no file is decoded again),
  and serves them as a second validation dataloader; the LightningModule logs
  `val_stress/*` beside `val/*` every epoch (pooled over every perturbation, plus
  `val_stress/<name>/auroc` per perturbation). Checkpoint selection is unchanged.
- Scripts: `pneumonia.evaluation.stress.stress_metrics(predictor, images, labels, threshold)`
  scores a checkpoint's `Predictor` on them; `python -m pneumonia.tools.stress CKPT [CKPT ...]`
  does it for checkpoints on their own validation split, at their stored thresholds.

Every perturbation is deterministic: random parts (noise, crop positions) come from a
generator seeded by (`seed`, the perturbation's name), so every epoch and every run sees
the same perturbed images. Each perturbation works on uint8 (N, C, S, S) images, as the
decoded cache holds them, and returns uint8 images of the same shape; the preprocessing
preset's float step (`Preprocess.to_input`, with its normalisation) runs afterwards, as it
would on images from another scanner.
"""

from __future__ import annotations

import io
import math
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pneumonia.data.drawing import black_bands, burn_in, gaussian_blur, glyph
from pneumonia.errors import ConfigError

if TYPE_CHECKING:
    from pneumonia.data.sampler import IndexedImages

__all__ = [
    "DEFAULT_PERTURBATIONS",
    "KINDS",
    "PERTURBATION_SETS",
    "SHORTCUT_PERTURBATIONS",
    "StressImages",
    "StressSettings",
    "perturb",
    "stress_images",
    "gaussian_blur",
    "glyph",
    "validation_images",
]

# name: strength. The kind of a perturbation is its name up to the first "_".
DEFAULT_PERTURBATIONS: dict[str, float] = {
    "gamma_low": 0.7,  # x ** 0.7: brighter mid-tones
    "gamma_high": 1.4,  # x ** 1.4: darker mid-tones
    "contrast_low": 0.7,  # (x - mean) * 0.7 + mean
    "contrast_high": 1.3,
    "blur": 1.0,  # Gaussian blur, sigma in pixels of data.image_size
    "noise": 0.03,  # additive Gaussian noise, std on the 0-1 scale
    "jpeg": 30,  # JPEG re-compression at this quality (PIL)
    "resolution": 0.5,  # down-sampled to this fraction of the size, then back up
    "crop": 0.9,  # a crop of this fraction of the side at a seeded random place, resized back
}
# Another hospital's images and the shortcuts a model could learn (off in data.stress by
# default; `python -m pneumonia.tools.stress --set shortcut|all`).
SHORTCUT_PERTURBATIONS: dict[str, float] = {
    "composed": 1.0,  # gamma 1.3, blur 0.8, noise 0.02, JPEG 40 and resolution 0.6 at once (scaled by the strength)
    "marker": 0.12,  # a white "R" or "L" at a seeded corner, this fraction of the side high
    "border": 0.15,  # black bands covering this fraction of the side (top+bottom or left+right, seeded)
    "fov": 0.8,  # the image shrunk to this fraction of the side, centred on black: a wider field of view
    "apex": 0.15,  # the top fraction cut off (the lung apex), the rest stretched back
    "costophrenic": 0.15,  # the bottom fraction cut off (the costophrenic angles), the rest stretched back
}
# The DICOM path (`--set dicom`; pydicom, the `dicom` extra): a set of its own, so that `all`
# stays what the tables measured with it
DICOM_PERTURBATIONS: dict[str, float] = {
    "dicom": 0.8,  # a 12-bit DICOM whose window covers this share of the image's 1-99th percentile range
}
PERTURBATION_SETS: dict[str, dict[str, float]] = {
    "standard": DEFAULT_PERTURBATIONS,
    "shortcut": SHORTCUT_PERTURBATIONS,
    "all": {**DEFAULT_PERTURBATIONS, **SHORTCUT_PERTURBATIONS},
    "dicom": DICOM_PERTURBATIONS,
}


def _u8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp_(0, 255).to(torch.uint8)


def _gamma(images: torch.Tensor, g: float, rng: np.random.Generator) -> torch.Tensor:
    return _u8((images.float() / 255).pow(g) * 255)


def _contrast(images: torch.Tensor, c: float, rng: np.random.Generator) -> torch.Tensor:
    x = images.float()
    mean = x.flatten(1).mean(1).view(-1, 1, 1, 1)
    return _u8((x - mean) * c + mean)


def _blur(images: torch.Tensor, sigma: float, rng: np.random.Generator) -> torch.Tensor:
    return _u8(gaussian_blur(images.float(), sigma))


def _noise(images: torch.Tensor, std: float, rng: np.random.Generator) -> torch.Tensor:
    noise = torch.from_numpy(rng.normal(0.0, std * 255, images.shape).astype(np.float32))
    return _u8(images.float() + noise)


def _jpeg(images: torch.Tensor, quality: float, rng: np.random.Generator) -> torch.Tensor:
    from PIL import Image

    out = torch.empty_like(images)
    for i, img in enumerate(images.numpy()):
        pil = Image.fromarray(img[0], "L") if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0), "RGB")
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            arr = np.array(decoded.convert(pil.mode))
        out[i] = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
    return out


def _resolution(images: torch.Tensor, factor: float, rng: np.random.Generator) -> torch.Tensor:
    size = images.shape[-2:]
    small = [max(1, round(s * factor)) for s in size]
    x = F.interpolate(images.float(), size=small, mode="bilinear", align_corners=False, antialias=True)
    return _u8(F.interpolate(x, size=list(size), mode="bilinear", align_corners=False))


def _crop(images: torch.Tensor, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """A square-fraction crop at a random place of each image, resized back (bilinear)."""
    n = len(images)
    # the crop's centre in [-1, 1] coordinates: anywhere that keeps the crop inside the image
    centre = torch.from_numpy(rng.uniform(-(1 - fraction), 1 - fraction, (n, 2)).astype(np.float32))
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = fraction
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return _u8(F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False))


# composed: strength 1 = these; strength s scales each change's distance from "no change"
COMPOSED_AT_ONE = {"gamma": 1.3, "blur": 0.8, "noise": 0.02, "jpeg": 40, "resolution": 0.6}


def _composed(images: torch.Tensor, s: float, rng: np.random.Generator) -> torch.Tensor:
    """Gamma, blur, resolution, noise and JPEG in the order a different acquisition chain
    applies them (optics and resampling, then sensor noise, then export)."""
    at = COMPOSED_AT_ONE
    x = _gamma(images, 1 + (at["gamma"] - 1) * s, rng)
    x = _blur(x, at["blur"] * s, rng)
    x = _resolution(x, max(0.05, 1 - (1 - at["resolution"]) * s), rng)
    x = _noise(x, at["noise"] * s, rng)
    return _jpeg(x, max(1, round(100 - (100 - at["jpeg"]) * s)), rng)


def _marker(images: torch.Tensor, height: float, rng: np.random.Generator) -> torch.Tensor:
    """A white "R" or "L" (seeded per image) burnt in at a seeded corner, `height` of the side high."""
    n, c, h, w = images.shape
    draws = rng.integers(0, 8, n)  # one draw per image: the same markers whatever the chunk size
    letters, corners = draws % 2, draws // 2
    out = images.clone()
    th = max(3, round(height * h))
    margin = max(1, round(0.04 * h))
    for i in range(n):
        ink = glyph("RL"[letters[i]])
        tw = max(2, min(w - 2 * margin, round(th * ink.shape[1] / ink.shape[0])))
        mask = (
            F.interpolate(ink[None, None], size=(min(th, h - 2 * margin), tw), mode="bilinear", align_corners=False)[
                0, 0
            ]
            .ge(0.5)
            .float()
        )
        burn_in(out[i], mask, int(corners[i]), margin)
    return out


def _border(images: torch.Tensor, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """Black bands (a collimator's) covering `fraction` of the side: top and bottom, or left
    and right (seeded per image), each band half of it."""
    n, c, h, w = images.shape
    out = images.clone()
    vertical = rng.integers(0, 2, n).astype(bool)
    for i in range(n):
        side = w if vertical[i] else h
        black_bands(out[i], max(1, round(fraction * side / 2)), bool(vertical[i]))
    return out


def _fov(images: torch.Tensor, scale: float, rng: np.random.Generator) -> torch.Tensor:
    """The image shrunk to `scale` of its side and centred on black: the same chest seen with
    a wider field of view."""
    n, c, h, w = images.shape
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(images.float(), size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
    out = torch.zeros_like(images)
    top, left = (h - sh) // 2, (w - sw) // 2
    out[:, :, top : top + sh, left : left + sw] = _u8(small)
    return out


def _cut(images: torch.Tensor, rows: slice) -> torch.Tensor:
    h, w = images.shape[-2:]
    return _u8(F.interpolate(images[:, :, rows].float(), size=(h, w), mode="bilinear", align_corners=False))


def _apex(images: torch.Tensor, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """The top `fraction` of the rows cut off (where the lung apices are), the rest stretched back."""
    h = images.shape[-2]
    return _cut(images, slice(min(h - 1, max(1, round(fraction * h))), h))


def _costophrenic(images: torch.Tensor, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """The bottom `fraction` of the rows cut off (the costophrenic angles), the rest stretched back."""
    h = images.shape[-2]
    return _cut(images, slice(0, h - min(h - 1, max(1, round(fraction * h)))))


def _dicom(images: torch.Tensor, width: float, rng: np.random.Generator) -> torch.Tensor:
    """Each image as a modality would store it and the project's reader reads it back
    (`data.dicom.read_dicom`): 12 bits (the 8-bit values times 16, plus seeded sub-steps),
    a rescale to modality units (slope 1, intercept -1024), a linear VOI window centred on
    the image's median and `width` times as wide as its 1st-99th percentile range (tails
    clipped, the rest stretched), MONOCHROME1 (stored inverted) for a seeded half, then the
    reader's window, min..max scaling and inversion. Colour images go in as their channel mean."""
    from pneumonia.data.dicom import _import_pydicom, read_dicom

    _import_pydicom()  # without pydicom: one line naming the extra
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    n, c, h, w = images.shape
    gray = images.float().mean(1).numpy() if c > 1 else images[:, 0].numpy().astype(np.float32)
    fine = rng.integers(0, 16, (n, h, w))
    inverted = rng.integers(0, 2, n).astype(bool)
    out = torch.empty_like(images)
    for i in range(n):
        stored = np.clip(np.rint(gray[i]) * 16 + fine[i], 0, 4095).astype(np.uint16)
        units = stored.astype(np.float64) - 1024  # what the rescale gives
        low, mid, high = np.percentile(units, [1, 50, 99])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1")  # CR image storage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CR", h, w, 1
        ds.PhotometricInterpretation = "MONOCHROME1" if inverted[i] else "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = round(float(mid)), max(2, round(width * float(high - low)))
        ds.PixelData = (4095 - stored if inverted[i] else stored).astype("<u2").tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        out[i] = torch.from_numpy(read_dicom(buffer))[None].expand(c, h, w)  # type: ignore[arg-type]  # a file-like
    return out


@dataclass(frozen=True)
class Kind:
    apply: Callable[[torch.Tensor, float, np.random.Generator], torch.Tensor]
    valid: Callable[[float], bool]
    rule: str
    integer: bool = False


KINDS: dict[str, Kind] = {
    "gamma": Kind(_gamma, lambda v: 0 < v <= 10, "a number in (0, 10]: x ** gamma on the 0-1 scale"),
    "contrast": Kind(_contrast, lambda v: 0 <= v <= 10, "a number in [0, 10]: the factor around the image mean"),
    "blur": Kind(_blur, lambda v: 0 < v <= 20, "a number in (0, 20]: the Gaussian sigma in pixels"),
    "noise": Kind(_noise, lambda v: 0 < v <= 1, "a number in (0, 1]: the noise std on the 0-1 scale"),
    "jpeg": Kind(_jpeg, lambda v: 1 <= v <= 100, "an integer in [1, 100]: the JPEG quality", integer=True),
    "resolution": Kind(_resolution, lambda v: 0 < v < 1, "a number in (0, 1): the down-sampling factor"),
    "crop": Kind(_crop, lambda v: 0 < v <= 1, "a number in (0, 1]: the crop's side as a fraction of the image"),
    "composed": Kind(
        _composed,
        lambda v: 0 < v <= 2,
        "a number in (0, 2]: the scale of the composed gamma, blur, resolution, noise and JPEG",
    ),
    "marker": Kind(
        _marker, lambda v: 0 < v <= 0.5, "a number in (0, 0.5]: the letter's height as a fraction of the side"
    ),
    "border": Kind(_border, lambda v: 0 < v < 1, "a number in (0, 1): the black bands' share of the side"),
    "fov": Kind(_fov, lambda v: 0 < v < 1, "a number in (0, 1): the image's side within the wider field of view"),
    "apex": Kind(_apex, lambda v: 0 < v <= 0.5, "a number in (0, 0.5]: the share of the rows cut off at the top"),
    "costophrenic": Kind(
        _costophrenic, lambda v: 0 < v <= 0.5, "a number in (0, 0.5]: the share of the rows cut off at the bottom"
    ),
    "dicom": Kind(
        _dicom, lambda v: 0 < v <= 10, "a number in (0, 10]: the window's width over the 1-99th percentile range"
    ),
}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def kind_of(name: str) -> str:
    return name.split("_", 1)[0]


def _generator(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def perturb(images: torch.Tensor, name: str, strength: float, seed: int = 0, chunk: int = 256) -> torch.Tensor:
    """`images` (uint8 (N, C, S, S), on the CPU) under the perturbation `name` (kind: the
    name up to its first "_") of `strength`; uint8, same shape. Deterministic: random
    draws come from (`seed`, `name`)."""
    if kind_of(name) not in KINDS:
        raise ValueError(f"perturbation {name!r}: its name must start with one of {', '.join(KINDS)}")
    kind = KINDS[kind_of(name)]
    rng = _generator(seed, name)
    images = images.cpu()
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"perturb wants uint8 (N, C, S, S) images, got {images.dtype} {tuple(images.shape)}")
    # in chunks: the float copies of a large validation split stay small; one generator
    # for all chunks, so the result does not depend on the chunk size's split of the draws
    return (
        torch.cat([kind.apply(images[i : i + chunk].contiguous(), strength, rng) for i in range(0, len(images), chunk)])
        if len(images)
        else images.clone()
    )


@dataclass(frozen=True)
class StressSettings:
    """`data.stress`: whether validation also runs on the perturbed images, their seed and
    the perturbations (name → strength, in order)."""

    enabled: bool = False
    seed: int = 0
    perturbations: tuple[tuple[str, float], ...] = tuple(DEFAULT_PERTURBATIONS.items())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.perturbations)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, key: str = "data.stress") -> StressSettings:
        """Checked settings from a config block (None: the defaults, disabled); a one-line
        `ConfigError` naming the key for anything wrong."""
        if cfg is None:
            return cls()
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"{key}={cfg!r} must be a mapping with enabled, seed and perturbations")
        unknown = sorted(set(cfg) - {"enabled", "seed", "perturbations"})
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]} is not a setting of {key} (enabled, seed, perturbations)")
        enabled = cfg.get("enabled", False)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{key}.enabled={enabled!r} must be true or false")
        seed = cfg.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{key}.seed={seed!r} must be an integer >= 0")
        given = cfg.get("perturbations", DEFAULT_PERTURBATIONS)
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"{key}.perturbations={given!r} must be a mapping of name: strength")
        perturbations = []
        for name, value in given.items():
            where = f"{key}.perturbations.{name}"
            if not isinstance(name, str) or not _NAME.match(name) or kind_of(name) not in KINDS:
                raise ConfigError(
                    f"{where}: a perturbation's name starts with its kind, one of {', '.join(KINDS)} (e.g. gamma_low)"
                )
            if value is None:
                continue  # null drops a perturbation
            kind = KINDS[kind_of(name)]
            wrong_type = (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (kind.integer and not float(value).is_integer())
            )
            if wrong_type or not math.isfinite(value) or not kind.valid(value):
                raise ConfigError(f"{where}={value!r} must be {kind.rule} (or null: left out)")
            perturbations.append((name, int(value) if kind.integer else float(value)))
        if enabled and not perturbations:
            raise ConfigError(f"{key}.enabled=true needs at least one perturbation in {key}.perturbations")
        return cls(enabled, seed, tuple(perturbations))


def stress_images(images: torch.Tensor, settings: StressSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Every perturbation of `settings` applied to every image: (P * N, C, S, S) uint8 images,
    perturbation by perturbation, and the (P * N,) index of each one's perturbation."""
    images = images.cpu().contiguous()
    out = torch.cat([perturb(images, name, strength, settings.seed) for name, strength in settings.perturbations])
    group = torch.arange(len(settings.perturbations)).repeat_interleave(len(images))
    return out, group


class StressImages(Dataset):
    """The perturbed validation set, indexed by a list of indices like `IndexedImages`:
    a batch is (images, labels, indices, perturbation index)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, settings: StressSettings) -> None:
        self.settings = settings
        self.n_images = len(images)
        self.images, self.group = stress_images(images, settings)
        self.labels = labels.cpu().repeat(len(settings.perturbations))

    @property
    def names(self) -> tuple[str, ...]:
        return self.settings.names

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, batch: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(batch, dtype=torch.long)
        return self.images[idx], self.labels[idx], idx, self.group[idx]


def validation_images(data: IndexedImages) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, labels) of a split as the DataModule holds it (`datamodule.splits["val"]`),
    gathered into memory in split order."""
    return data.images[data.indices].contiguous(), data.labels[data.indices].clone()
