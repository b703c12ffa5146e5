"""The one preprocessing preset: how a file (or an array) becomes a model input.

Two steps, used by everything that feeds the network:

1. `Preprocess.load(path)`: decode (PIL for images, pydicom for DICOM), convert to gray or
   RGB, resize (squashed, bilinear, like Keras' `target_size`) to a (C, S, S) uint8 array.
   The decoded-image cache stores exactly this, and the Predictor calls it per file. The
   code is in `pneumonia.data.decode` (no torch), which the ONNX backend runs too.
2. `Preprocess.to_input(batch)`: uint8 (N, C, S, S) → float in [0, 1], on whatever device
   the batch is on. The DataModule applies it after the batch reached the model's device
   (then augments, when training); the Predictor applies it to its batches.

So a file scored by `predict.py` gets the same tensor, bit for bit, as the same file in a
validation batch (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pneumonia.data import decode
from pneumonia.errors import ConfigError


@dataclass(frozen=True)
class Preprocess:
    """Decode and resize to `image_size` px with `channels` channels (1 gray, 3 RGB)."""

    image_size: int
    channels: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 8:
            raise ConfigError(f"data.image_size={self.image_size!r} must be an integer >= 8")
        if self.channels not in (1, 3):
            raise ConfigError(f"model.in_channels={self.channels!r} must be 1 (grayscale) or 3 (RGB)")

    # ---- step 1: file -> uint8 (C, S, S) -------------------------------------------------
    def load(self, path: str | Path) -> np.ndarray:
        """One file as a (C, S, S) uint8 array, whatever its format, mode and size
        (`pneumonia.data.decode.load_image`: PIL and numpy only, shared with the ONNX backend).

        16-bit and 32-bit integer images are scaled to 8 bits by their range (PIL's own
        conversion would clip them white); palette and alpha images are flattened on black.
        """
        return decode.load_image(path, self.image_size, self.channels)

    def from_pil(self, img: Image.Image) -> np.ndarray:
        """An already opened PIL image (any mode) as a (C, S, S) uint8 array."""
        return decode.from_pil(img, self.image_size, self.channels)

    # ---- step 2: uint8 batch -> float input --------------------------------------------------
    @staticmethod
    def to_input(images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, S, S) → float32 in [0, 1] on the same device."""
        return images.float().div_(255)

    def __call__(self, path: str | Path) -> torch.Tensor:
        """One file → its (C, S, S) float model input."""
        return self.to_input(torch.from_numpy(self.load(path))[None])[0]

    def describe(self) -> dict[str, Any]:
        """What a consumer without this package needs to reproduce the preset."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "color": "grayscale (PIL 'L')" if self.channels == 1 else "RGB",
            "resize": "squash to image_size x image_size, bilinear (PIL), no crop, no aspect ratio kept",
            "scale": "uint8 / 255 -> float32 in [0, 1], no mean/std normalisation",
            "layout": "NCHW",
            "dicom": "modality LUT, VOI LUT/window, min-max to 8 bits, MONOCHROME1 inverted",
        }
