"""The one preprocessing preset: how a file (or an array) becomes a model input.

Two steps, used by everything that feeds the network:

1. `Preprocess.load(path)`: decode (PIL for images, pydicom for DICOM), convert to gray or
   RGB, resize (squashed, bilinear, like Keras' `target_size`) to a (C, S, S) uint8 array.
   The decoded-image cache stores exactly this, and the Predictor calls it per file. The
   code is in `pneumonia.data.decode` (no torch), which the ONNX backend runs too.
2. `Preprocess.to_input(batch)`: uint8 (N, C, S, S) → float, on whatever device the batch
   is on: `to_unit` (/255 to [0, 1]), then `normalize_input` (`crop`: none, or each image cut
   to its content, black bands and a wider black field of view removed; then `normalize`:
   none, per-image standardisation, or histogram equalisation). The DataModule applies it after the batch
   reached the model's device (when training, the augmentation runs between the two steps,
   on images in [0, 1], so normalisation is always the last thing before the network); the
   Predictor applies it to its batches.

`normalize` is applied to the float batch, not at decode time, on purpose: the decoded
cache holds the same bytes whatever `normalize` is (one cache serves every value), and
whatever changes an image before the network (training augmentation, the stress
validation's acquisition changes) comes before the normalisation, as a different scanner
would.

So a file scored by `predict.py` gets the same tensor, bit for bit, as the same file in a
validation batch (tested).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pneumonia.data import decode
from pneumonia.data.pixels import DEFAULT_MAX_PIXELS, check_max_pixels
from pneumonia.errors import ConfigError
from pneumonia.signature import Ge, check_arguments


Normalize = Literal["none", "standardize", "equalize"]  # spelled out in signatures too (read unimported)
NORMALIZE: tuple[str, ...] = typing.get_args(Normalize)
Crop = Literal["none", "content"]


@dataclass(frozen=True)
class Preprocess:
    """Decode and resize to `image_size` px with `channels` channels (1 gray, 3 RGB), then
    scale to [0, 1] and normalise (`normalize`: "none", "standardize": each image to zero
    mean and unit standard deviation, "equalize": each image's histogram equalised).
    Files over `max_pixels` (`data.max_pixels`, read from the header) are refused undecoded."""

    image_size: Annotated[int, Ge(8)]
    channels: int = 1
    normalize: Literal["none", "standardize", "equalize"] = "none"  # NORMALIZE
    max_pixels: int = DEFAULT_MAX_PIXELS
    crop: Literal["none", "content"] = "none"  # Crop

    def __post_init__(self) -> None:
        # the fields declare their types and ranges; errors name the bare field (the caller adds `data.`)
        check_max_pixels(self.max_pixels, "max_pixels")  # its own message says what the limit is for
        check_arguments(Preprocess, vars(self))
        if self.channels not in (1, 3):
            raise ConfigError(f"channels={self.channels!r} must be 1 (grayscale) or 3 (RGB)")

    # ---- step 1: file -> uint8 (C, S, S) -------------------------------------------------
    def load(self, path: str | Path) -> np.ndarray:
        """One file as a (C, S, S) uint8 array, whatever its format, mode and size
        (`pneumonia.data.decode.load_image`: PIL and numpy only, shared with the ONNX backend).

        16-bit and 32-bit integer images are scaled to 8 bits by their range (PIL's own
        conversion would clip them white); palette and alpha images are flattened on black.
        Files over `max_pixels` raise `TooManyPixels` before decoding.
        """
        return decode.load_image(path, self.image_size, self.channels, self.max_pixels, "data.max_pixels")

    def from_pil(self, img: Image.Image) -> np.ndarray:
        """An already opened PIL image (any mode) as a (C, S, S) uint8 array."""
        return decode.from_pil(img, self.image_size, self.channels)

    # ---- step 2: uint8 batch -> float input --------------------------------------------------
    @staticmethod
    def to_unit(images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, S, S) → float32 in [0, 1] on the same device."""
        return images.float().div_(255)

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The float batch in [0, 1] (N, C, S, S), cut to its content (`crop`), then normalised
        by `normalize` (the identity for none and none)."""
        return normalized(cropped(x, self.crop), self.normalize)

    def normalizer(self) -> torch.nn.Module:
        """`normalize_input` as a module, to put in front of a network (an exported graph
        that takes uint8 / 255, as model.json says, and crops and normalises inside)."""
        return InputNormalization(self.normalize, self.crop)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, S, S) → the network's float32 input on the same device: in [0, 1],
        then normalised (`normalize`)."""
        return self.normalize_input(self.to_unit(images))

    def __call__(self, path: str | Path) -> torch.Tensor:
        """One file → its (C, S, S) float model input."""
        return self.to_input(torch.from_numpy(self.load(path))[None])[0]

    def describe(self) -> dict[str, Any]:
        """What a consumer without this package needs to reproduce the preset."""
        described = {
            **self.decode_description(),
            "normalize": self.normalize,
            "normalization": NORMALIZATION_TEXT[self.normalize],
        }
        if self.crop != "none":
            described["crop"] = self.crop
            described["cropping"] = CROP_TEXT
        if self.normalize != "none":
            described["scale"] = "uint8 / 255 -> float32 in [0, 1], then `normalization`"
        return described

    def decode_description(self) -> dict[str, Any]:
        """The part of `describe()` that decides the decoded uint8 images (the image cache's
        key): `normalize` is left out, as it acts on the float batch, after the cache."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "color": "grayscale (PIL 'L')" if self.channels == 1 else "RGB",
            "resize": "squash to image_size x image_size, bilinear (PIL), no crop, no aspect ratio kept",
            "scale": "uint8 / 255 -> float32 in [0, 1], no mean/std normalisation",
            "layout": "NCHW",
            "dicom": "modality LUT, VOI LUT/window, min-max to 8 bits, MONOCHROME1 inverted",
        }


NORMALIZATION_TEXT = {
    "none": "none: the network sees uint8 / 255",
    "standardize": "per image, over all its pixels and channels: (x - mean) / max(std, 1e-6), x = uint8 / 255",
    "equalize": "per image and channel, Pillow's ImageOps.equalize of round(x * 255), then / 255",
}


def standardize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each image of (N, C, H, W) to zero mean and unit standard deviation over all its
    pixels and channels (population std; a constant image becomes all zeros). Cancels a
    linear change of brightness and contrast."""
    flat = x.flatten(1)
    mean = flat.mean(1).view(-1, *([1] * (x.ndim - 1)))
    std = flat.std(1, correction=0).clamp_min(eps).view(-1, *([1] * (x.ndim - 1)))
    return (x - mean) / std


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each image and channel of a float (N, C, H, W) batch in
    [0, 1], on 256 levels (round(x * 255)), vectorised on the batch's device. The same
    look-up table as Pillow's `ImageOps.equalize` (tested equal): with `step` = (pixels
    not at the brightest level present) // 255, level v becomes
    (step // 2 + pixels darker than v) // step, clipped to 255; an image with a single level
    (or fewer than 255 pixels below its brightest level) is left as it is. A monotone change
    of the intensities (gamma, contrast) leaves the result (nearly) unchanged. Returns
    [0, 1] floats of the input's dtype."""
    n, c, h, w = x.shape
    levels = (x.detach().float() * 255).round_().clamp_(0, 255).long().view(n * c, h * w)
    counts = torch.zeros(n * c, 256, dtype=torch.long, device=x.device)
    counts.scatter_add_(1, levels, torch.ones_like(levels))
    darker = counts.cumsum(1) - counts  # pixels below each level
    brightest = counts.gather(1, levels.max(1, keepdim=True).values)
    step = (h * w - brightest) // 255  # (n * c, 1)
    lut = torch.div(step // 2 + darker, step.clamp_min(1), rounding_mode="floor").clamp_(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device))  # nothing to spread: unchanged
    return (lut.gather(1, levels).float() / 255).view(n, c, h, w).to(x.dtype)


# `crop: content`: a pixel is content above CONTENT_LEVEL (of 1), a row or column when more
# than CONTENT_SHARE of its pixels are (a burnt-in letter on a black band is not); a box
# under CONTENT_MIN_SIDE of a side is not trusted (that side is kept whole)
CONTENT_LEVEL, CONTENT_SHARE, CONTENT_MIN_SIDE = 8 / 255, 0.2, 0.5
CROP_TEXT = (
    f"before normalisation, each image cut to the box of its rows and columns with more than {CONTENT_SHARE:.0%} "
    f"of pixels above {CONTENT_LEVEL * 255:.0f}/255 (a side kept whole where the box is under "
    f"{CONTENT_MIN_SIDE:.0%} of it), resized back (bilinear, grid_sample); images without such borders unchanged"
)


def _extent(content: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, last) index of True along dim 1 of (N, size), or (0, size - 1) where there is
    none or the span is under CONTENT_MIN_SIDE of `size`."""
    idx = torch.arange(size, device=content.device)
    first = torch.where(content, idx, size).amin(1)
    last = torch.where(content, idx, -1).amax(1)
    keep = (last - first + 1) >= CONTENT_MIN_SIDE * size
    return torch.where(keep, first, 0), torch.where(keep, last, size - 1)


def crop_to_content(x: torch.Tensor) -> torch.Tensor:
    """Each image of a float (N, C, H, W) batch in [0, 1] cut to the box of its content and
    resized back to (H, W): black collimator bands and a black field of view around the chest
    go, whatever their size (`CROP_TEXT`). Images whose box is the whole image come back
    unchanged (bit for bit). Vectorised, on the batch's device; exports to ONNX (GridSample)."""
    n, c, h, w = x.shape
    bright = (x.amax(1) > CONTENT_LEVEL).to(x.dtype)  # (N, H, W)
    top, bottom = _extent(bright.mean(2) > CONTENT_SHARE, h)
    left, right = _extent(bright.mean(1) > CONTENT_SHARE, w)
    # each output pixel's centre, mapped into the box (in input pixels), then to grid_sample's [-1, 1]
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
    # clamped to the box's outer pixel centres: no black from outside the box blends in at its edges
    py = torch.minimum(
        torch.maximum(top[:, None] + ys[None] * (bottom - top + 1)[:, None], top[:, None] + 0.5), bottom[:, None] + 0.5
    )
    px = torch.minimum(
        torch.maximum(left[:, None] + xs[None] * (right - left + 1)[:, None], left[:, None] + 0.5), right[:, None] + 0.5
    )
    gy, gx = py / h * 2 - 1, px / w * 2 - 1  # (N, H), (N, W)
    grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)], dim=-1)
    resampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    whole = ((top == 0) & (bottom == h - 1) & (left == 0) & (right == w - 1)).view(n, 1, 1, 1)
    return torch.where(whole, x, resampled)


def cropped(x: torch.Tensor, crop: str) -> torch.Tensor:
    """The one dispatch of `data.crop`."""
    return crop_to_content(x) if crop == "content" else x


class InputNormalization(torch.nn.Module):
    """`Preprocess.normalize_input` of a `normalize` and `crop` value as a module (the
    identity for none and none)."""

    def __init__(self, normalize: Normalize = "none", crop: Crop = "none") -> None:
        super().__init__()
        Preprocess(8, 1, normalize, crop=crop)  # checks the values
        self.normalize, self.crop = normalize, crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalized(cropped(x, self.crop), self.normalize)


def normalized(x: torch.Tensor, normalize: str) -> torch.Tensor:
    """The one dispatch of `data.normalize` (eager batches and exported graphs alike)."""
    if normalize == "standardize":
        return standardize(x)
    if normalize == "equalize":
        return equalize(x)
    return x
