"""Step 1 of the preprocessing preset without torch: a file → a (C, S, S) uint8 array.

PIL and numpy only (pydicom for DICOM), so the torch-free ONNX backend
(`pneumonia.export.onnx_predictor`) decodes with exactly the code that
`pneumonia.data.preprocess.Preprocess.load` runs for training, evaluation and predict:
the same file gives the same array, bit for bit (tested). Every file passes the pixel
limit (`pneumonia.data.pixels`) from its header before it is decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pneumonia.data.pixels import DEFAULT_MAX_PIXELS, check_pixels, open_image, require_regular_file

__all__ = ["from_pil", "load_image"]

# PIL modes of 16/32-bit integer and float images: scaled to 8 bits by range, not clipped
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _to_pil(path: str, max_pixels: int, setting: str) -> Image.Image:
    """The file as a PIL image in any mode (DICOM through pydicom, as 8-bit gray), its
    size checked against `max_pixels` before any pixel is decoded."""
    from pneumonia.data.dicom import is_dicom, read_dicom

    require_regular_file(path)  # a FIFO named x.png would block the open below
    if is_dicom(path):
        return Image.fromarray(read_dicom(path, max_pixels, setting), "L")
    img = open_image(path)  # lazy: the header only
    try:
        check_pixels(*img.size, max_pixels, setting)
    except BaseException:
        img.close()
        raise
    return img


def load_image(
    path: str | Path, image_size: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS, setting: str = "max_pixels"
) -> np.ndarray:
    """One file as a (C, S, S) uint8 array, whatever its format, mode and size.

    16-bit and 32-bit integer images are scaled to 8 bits by their range (PIL's own
    conversion would clip them white); palette and alpha images are flattened on black.
    Images over `max_pixels` (width x height from the header; the name of the setting is
    `setting`) raise `TooManyPixels` without being decoded.
    """
    with _to_pil(str(path), max_pixels, setting) as img:
        if img.format == "JPEG" and min(img.size) >= 2 * image_size:
            # DCT-domain downscaling: decodes a 2916 px original several times faster
            img.draft("L" if channels == 1 else "RGB", (image_size, image_size))
        img.load()
        return from_pil(img, image_size, channels)


def from_pil(img: Image.Image, image_size: int, channels: int) -> np.ndarray:
    """An already opened PIL image (any mode) as a (C, S, S) uint8 array: gray (PIL 'L') or
    RGB, squashed to `image_size` x `image_size` with PIL's bilinear filter."""
    if img.mode in _WIDE_MODES:
        arr = np.array(img, dtype=np.float32)  # in place below: one float copy of the image, not three
        top = 65535.0 if arr.max() > 255 else 255.0
        arr *= 255.0 / top
        img = Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8), "L")
    if img.mode in ("PA", "LA", "RGBA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    img = img.convert("L" if channels == 1 else "RGB")
    img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    arr = np.array(img, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)
