"""Augmentation of a whole batch at once, on whatever device the batch is on.

Per image, the seed notebook's Keras ImageDataGenerator draws a shear angle, a zoom per
axis and a horizontal flip and resamples the image on the CPU. Here every image still
gets its own random parameters, but they become one (N, 2, 3) affine matrix and one
`grid_sample` call for the batch: the same distribution of images, without a Python
loop or a PIL round trip, and on the GPU when the model is there.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pneumonia.errors import ConfigError


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
    """

    def __init__(
        self,
        shear: float = 0.2,
        zoom: float = 0.2,
        hflip: bool = True,
        rotation: float = 0.0,
        translate: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        mixup: float = 0.0,
    ) -> None:
        for name, value in dict(
            shear=shear,
            zoom=zoom,
            rotation=rotation,
            translate=translate,
            brightness=brightness,
            contrast=contrast,
            mixup=mixup,
        ).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ConfigError(f"data.augment.{name}={value!r} must be a number >= 0")
        for name, value in dict(zoom=zoom, translate=translate, brightness=brightness, contrast=contrast).items():
            if value >= 1:  # zoom/contrast >= 1 allow scales <= 0; a shift >= 1 moves the image out of the frame
                raise ConfigError(f"data.augment.{name}={value} must be < 1")
        if not isinstance(hflip, bool):
            raise ConfigError(f"data.augment.hflip={hflip!r} must be true or false")
        self.shear, self.zoom, self.hflip = shear, zoom, hflip
        self.rotation, self.translate = rotation, translate
        self.brightness, self.contrast = brightness, contrast
        self.mixup = float(mixup)

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
