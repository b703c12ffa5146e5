"""Augmentation of a whole batch at once, on whatever device the batch is on.

Per image, the seed notebook's Keras ImageDataGenerator draws a shear angle, a zoom per
axis and a horizontal flip and resamples the image on the CPU. Here every image still
gets its own random parameters, but they become one (N, 2, 3) affine matrix and one
`grid_sample` call for the batch: the same distribution of images, without a Python
loop or a PIL round trip, and on the GPU when the model is there.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pneumonia.data.drawing import black_bands, burn_in, gaussian_blur, text_mask
from pneumonia.signature import Annotated, Ge, Le, Lt, check_arguments

# what can be burnt in by the overlay augmentation: not "R" or "L", the letters of stress
# validation's `marker` perturbation, so that the stress proxy still measures a shortcut the
# network was not shown (docs/results.md, "Candidates against the worst case")
OVERLAY_TEXT = "AP0123456789"


class BatchAugment:
    """Random affine (shear, zoom, rotation, translation, horizontal flip) plus
    brightness and contrast jitter for a float batch in [0, 1].

    Conventions follow Keras' ImageDataGenerator so the seed recipe means the same thing:
    `shear` is an angle in degrees (Keras' shear_range), `zoom` draws each axis' scale from
    [1 - zoom, 1 + zoom], and pixels from outside the image repeat the border
    (fill_mode="nearest"). `rotation` is in degrees, `translate` a fraction of the size,
    `brightness` an additive shift and `contrast` a factor range around the image mean.

    `mixup` (alpha, 0 = off) mixes each training image with another of the batch
    (`mix`): x = lam * x_i + (1 - lam) * x_j, target = lam * y_i + (1 - lam) * y_j, with
    lam ~ Beta(alpha, alpha) per image, folded to lam >= 0.5 so that image i dominates and
    its own label stays its hard label (what the training metrics count).

    Against another hospital's images (each a probability per image, 0 = off):
    `acquisition` gives an image a random acquisition chain (gamma, blur, down-sampling and
    noise, each strength drawn per image, applied in that order); `overlay` burns in a
    random white text (one to three of OVERLAY_TEXT's characters, 4-15% of the side high, at
    a random corner) and, independently with the same probability, black collimator bands
    (2-25% of the side, top and bottom or left and right), so that neither can be a cue;
    `frame` shrinks an image to 0.7-1 of its side at a random place on black (a wider field
    of view).
    """

    def __init__(
        self,
        shear: Annotated[float, Ge(0)] = 0.2,
        zoom: Annotated[float, Ge(0), Lt(1)] = 0.2,  # >= 1 allows scales <= 0
        hflip: bool = True,
        rotation: Annotated[float, Ge(0)] = 0.0,
        translate: Annotated[float, Ge(0), Lt(1)] = 0.0,  # >= 1 moves the image out of the frame
        brightness: Annotated[float, Ge(0), Lt(1)] = 0.0,
        contrast: Annotated[float, Ge(0), Lt(1)] = 0.0,
        mixup: Annotated[float, Ge(0)] = 0.0,
        acquisition: Annotated[float, Ge(0), Le(1)] = 0.0,
        overlay: Annotated[float, Ge(0), Le(1)] = 0.0,
        frame: Annotated[float, Ge(0), Le(1)] = 0.0,
    ) -> None:
        # the signature declares each argument's range; the config layer adds `data.augment.`
        check_arguments(BatchAugment, locals())
        self.shear, self.zoom, self.hflip = float(shear), float(zoom), hflip
        self.rotation, self.translate = float(rotation), float(translate)
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.mixup = float(mixup)
        self.acquisition, self.overlay, self.frame = float(acquisition), float(overlay), float(frame)

    @property
    def geometric(self) -> bool:
        return bool(self.shear or self.zoom or self.rotation or self.translate or self.hflip)

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None, *, non_blocking: bool = False
    ) -> torch.Tensor:
        """Augment `x` (N, C, H, W float in [0, 1]); parameters come from `generator`
        (a CPU generator, so a seed gives the same augmentation on any device). With
        `non_blocking` their copies to a GPU do not wait for it (the device-resident path:
        no host sync per batch); the values are the same."""
        n = x.shape[0]

        def uniform(half_width: float) -> torch.Tensor:
            return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * half_width

        if self.geometric:
            shear = torch.deg2rad(uniform(self.shear))
            rot = torch.deg2rad(uniform(self.rotation))
            zx, zy = 1 + uniform(self.zoom), 1 + uniform(self.zoom)
            tx, ty = uniform(2 * self.translate), uniform(2 * self.translate)  # [-1, 1] spans the image
            flip = (torch.rand(n, generator=generator) < 0.5) if self.hflip else torch.zeros(n, dtype=torch.bool)
            cos, sin = torch.cos(rot), torch.sin(rot)
            # output -> input coordinates: rotation @ shear @ zoom (the order Keras composes)
            a = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
            s = torch.stack(
                [
                    torch.stack([torch.ones(n, dtype=torch.float64), -torch.sin(shear)], -1),
                    torch.stack([torch.zeros(n, dtype=torch.float64), torch.cos(shear)], -1),
                ],
                -2,
            )
            z = torch.diag_embed(torch.stack([zx, zy], -1))
            m = a @ s @ z
            m[:, :, 0] = torch.where(flip[:, None], -m[:, :, 0], m[:, :, 0])
            theta = torch.cat([m, torch.stack([tx, ty], -1)[:, :, None]], 2)
            theta = theta.to(x.device, x.dtype, non_blocking=non_blocking)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

        if self.brightness or self.contrast:
            c = (1 + uniform(self.contrast)).to(x.device, x.dtype, non_blocking=non_blocking).view(n, 1, 1, 1)
            b = uniform(self.brightness).to(x.device, x.dtype, non_blocking=non_blocking).view(n, 1, 1, 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * c + mean + b).clamp_(0, 1)
        if self.acquisition:
            x = self._acquire(x, generator)
        if self.overlay:
            x = self._overlay(x, generator)
        if self.frame:
            x = self._frame(x, generator)
        return x

    def _frame(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A wider field of view for a share `frame` of the images: each shrunk to 0.7-1 of
        its side (drawn per image) at a random place, on black."""
        n = x.shape[0]
        chosen = torch.rand(n, generator=generator) < self.frame
        scale = 0.7 + 0.3 * torch.rand(n, generator=generator, dtype=torch.float64)
        room = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2 - 1  # where in the free margin
        if not chosen.any():
            return x
        inv = torch.where(chosen, 1 / scale, torch.ones_like(scale))
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = theta[:, 1, 1] = inv
        theta[:, :, 2] = torch.where(chosen[:, None], -room * (inv - 1)[:, None], torch.zeros_like(room))
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        framed = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return torch.where(chosen.to(x.device)[:, None, None, None], framed, x)

    def _acquire(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A random acquisition chain for a share `acquisition` of the images: gamma
        (log-uniform in [0.7, 1.4]), Gaussian blur (sigma up to 1 pixel), down-sampling (to
        0.5-1 of the side and back) and Gaussian noise (std up to 0.03), each drawn per image."""
        n = x.shape[0]
        chosen = torch.nonzero(torch.rand(n, generator=generator) < self.acquisition).flatten().tolist()
        if not chosen:
            return x
        draws = torch.rand(len(chosen), 4, generator=generator, dtype=torch.float64)
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        noise_gen = torch.Generator(device=x.device).manual_seed(noise_seed)
        x = x.clone()
        size = list(x.shape[-2:])
        for row, i in enumerate(chosen):
            gamma, sigma, factor, std = draws[row].tolist()
            img = x[i : i + 1].clamp(1e-6, 1).pow(math.exp(math.log(0.7) + gamma * math.log(2.0)))
            if sigma > 0.1:
                img = gaussian_blur(img, sigma)
            small = [max(1, round(s * (0.5 + factor / 2))) for s in size]
            img = F.interpolate(img, size=small, mode="bilinear", align_corners=False, antialias=True)
            img = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
            noise = torch.randn(img.shape, generator=noise_gen, device=x.device, dtype=img.dtype)
            x[i] = (img + noise * 0.03 * std).clamp_(0, 1)[0]
        return x

    def _overlay(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Burnt-in text and collimator bands, each for a share `overlay` of the images."""
        n, _, h, w = x.shape
        text = torch.rand(n, generator=generator) < self.overlay
        bands = torch.rand(n, generator=generator) < self.overlay
        draws = torch.rand(n, 5, generator=generator, dtype=torch.float64)
        picks = torch.randint(0, len(OVERLAY_TEXT), (n, 3), generator=generator).tolist()
        if not (text.any() or bands.any()):
            return x
        x = x.clone()
        for i in range(n):
            height_d, count_d, corner_d, band_d, axis_d = draws[i].tolist()
            if bands[i]:
                vertical = axis_d < 0.5
                side = w if vertical else h
                black_bands(x[i], max(1, round((0.02 + 0.23 * band_d) * side / 2)), vertical)
            if text[i]:
                count = 1 + min(2, int(count_d * 3))
                chars = [OVERLAY_TEXT[k] for k in picks[i][:count]]
                mask = text_mask(chars, max(3, round((0.04 + 0.11 * height_d) * h)), w).to(x.device, x.dtype)
                burn_in(x[i], mask, int(corner_d * 4) % 4, max(1, round(0.03 * h)))
        return x

    def mix(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        non_blocking: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup of a batch (`mixup` = alpha > 0): (mixed images, soft targets in [0, 1]).

        Each image i is mixed with image perm(i) of the same batch, lam ~ Beta(alpha, alpha)
        folded to max(lam, 1 - lam); the draws come from `generator` (a CPU generator: the
        same seed mixes the same way on any device). With `mixup` = 0: `x` and the labels
        as floats."""
        targets = labels.float()
        if not self.mixup or len(x) < 2:
            return x, targets
        n = len(x)
        perm = torch.randperm(n, generator=generator)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        draws = np.random.default_rng(seed).beta(self.mixup, self.mixup, n)
        lam = torch.from_numpy(np.maximum(draws, 1 - draws)).to(x.device, torch.float32, non_blocking=non_blocking)
        perm = perm.to(x.device, non_blocking=non_blocking)
        mixed = x * lam.view(n, *([1] * (x.ndim - 1))).to(x.dtype) + x[perm] * (1 - lam).view(
            n, *([1] * (x.ndim - 1))
        ).to(x.dtype)
        return mixed, targets * lam + targets[perm] * (1 - lam)
