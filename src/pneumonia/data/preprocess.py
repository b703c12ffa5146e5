"""The one preprocessing preset: how a file (or an array) becomes a model input.

Two steps, used by everything that feeds the network:

1. `Preprocess.load(path)`: decode (PIL for images, pydicom for DICOM), convert to gray or
   RGB, resize (squashed, bilinear, like Keras' `target_size`) to a (C, S, S) uint8 array.
   The decoded-image cache stores exactly this, and the Predictor calls it per file. The
   code is in `pneumonia.data.decode` (no torch), which the ONNX backend runs too.
2. `Preprocess.to_input(batch)`: uint8 (N, C, S, S) → float, on whatever device the batch
   is on: `to_unit` (/255 to [0, 1]), then `normalize_input` (`normalize`: none, per-image
   standardisation, or histogram equalisation). The DataModule applies it after the batch
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
from PIL import Image

from pneumonia.data import decode
from pneumonia.data.pixels import DEFAULT_MAX_PIXELS, check_max_pixels
from pneumonia.errors import ConfigError
from pneumonia.signature import Ge, check_arguments


Normalize = Literal["none", "standardize", "equalize"]  # spelled out in signatures too (read unimported)
NORMALIZE: tuple[str, ...] = typing.get_args(Normalize)


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
        """The float batch in [0, 1] (N, C, S, S), normalised by `normalize` (the identity for none)."""
        return normalized(x, self.normalize)

    def normalizer(self) -> torch.nn.Module:
        """`normalize_input` as a module, to put in front of a network (an exported graph
        that takes uint8 / 255, as model.json says, and normalises inside)."""
        return InputNormalization(self.normalize)

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


class InputNormalization(torch.nn.Module):
    """`Preprocess.normalize_input` of a `normalize` value as a module (the identity for none)."""

    def __init__(self, normalize: Normalize = "none") -> None:
        super().__init__()
        Preprocess(8, 1, normalize)  # checks the value
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalized(x, self.normalize)


def normalized(x: torch.Tensor, normalize: str) -> torch.Tensor:
    """The one dispatch of `data.normalize` (eager batches and exported graphs alike)."""
    if normalize == "standardize":
        return standardize(x)
    if normalize == "equalize":
        return equalize(x)
    return x
