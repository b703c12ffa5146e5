"""Drawing on image batches, shared by stress validation (`data.stress`: uint8 images) and
the training augmentations (`data.augment`: float images in [0, 1]): a Gaussian blur, the
letters of Pillow's built-in font as masks, collimator bands, a corner box for burnt-in text."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["black_bands", "burn_in", "corner_box", "gaussian_blur", "glyph", "text_mask"]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of a float (N, C, H, W) batch, reflect padding (the `blur`
    perturbation, and the training augmentation's acquisition chain)."""
    n, c, h, w = x.shape
    radius = max(1, min(math.ceil(3 * sigma), min(h, w) - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


_GLYPHS: dict[str, torch.Tensor] = {}


def glyph(letter: str) -> torch.Tensor:
    """The letter's mask (0 or 1, cropped to its ink) in Pillow's built-in default font."""
    if letter not in _GLYPHS:
        from PIL import Image, ImageDraw, ImageFont

        try:
            font = ImageFont.load_default(size=40)  # Pillow's built-in font, scalable where FreeType is there
        except (TypeError, OSError):  # older Pillow or no FreeType: the small bitmap font
            font = ImageFont.load_default()
        canvas = Image.new("L", (64, 64))
        ImageDraw.Draw(canvas).text((8, 4), letter, fill=255, font=font)
        arr = (np.asarray(canvas) >= 128).astype(np.float32)  # solid ink, as a burnt-in marker is
        rows, cols = np.nonzero(arr.any(1))[0], np.nonzero(arr.any(0))[0]
        _GLYPHS[letter] = torch.from_numpy(arr[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy())
    return _GLYPHS[letter]


def text_mask(chars: list[str], height: int, width: int) -> torch.Tensor:
    """The characters side by side (Pillow's built-in font), `height` pixels high, at most
    half of `width` wide: a 0/1 float mask."""
    glyphs = [glyph(ch) for ch in chars]
    parts = []
    for g in glyphs:
        gw = max(2, round(height * g.shape[1] / g.shape[0]))
        parts.append(F.interpolate(g[None, None], size=(height, gw), mode="bilinear", align_corners=False)[0, 0])
        parts.append(torch.zeros(height, max(1, height // 6)))
    mask = torch.cat(parts[:-1], 1).ge(0.5).float()
    return mask[:, : max(2, width // 2)]


def black_bands(image: torch.Tensor, band: int, vertical: bool) -> None:
    """Set two black bands of `band` pixels on an image (C, H, W), in place: left and right
    (`vertical`) or top and bottom, as a collimator leaves them."""
    if vertical:
        image[:, :, :band] = 0
        image[:, :, image.shape[-1] - band :] = 0
    else:
        image[:, :band] = 0
        image[:, image.shape[-2] - band :] = 0


def corner_box(h: int, w: int, mh: int, mw: int, corner: int, margin: int) -> tuple[int, int]:
    """(top, left) of an `mh` x `mw` box `margin` pixels inside corner 0-3 (top left, top
    right, bottom left, bottom right) of an `h` x `w` image."""
    return (margin if corner < 2 else h - margin - mh), (margin if corner % 2 == 0 else w - margin - mw)


def burn_in(image: torch.Tensor, mask: torch.Tensor, corner: int, margin: int) -> None:
    """Burn `mask` (0/1, float, H' x W') in white into `image` (C, H, W), in place, at
    `corner_box(..., corner, margin)`: 255 in a uint8 image (rounded back), 1 in a float one."""
    h, w = image.shape[-2:]
    mh, mw = mask.shape
    top, left = corner_box(h, w, mh, mw, corner, margin)
    region = image[:, top : top + mh, left : left + mw]
    if image.dtype == torch.uint8:
        image[:, top : top + mh, left : left + mw] = (
            (region.float() * (1 - mask) + 255 * mask).round().clamp_(0, 255).to(torch.uint8)
        )
    else:
        image[:, top : top + mh, left : left + mw] = region * (1 - mask) + mask
