"""Test-time augmentation: a network wrapper that averages P(pneumonia) over small scale and
shift variants of each image (no flips: a mirrored chest puts the heart on the wrong side).

    net = TTA(net)                        # scales (1.0, 0.95, 1.05), shifts of 3% left/right/up/down
    logits = net(x)                       # logit of the mean probability over the 7 variants

It is a plain `nn.Module` returning one logit per image, like the network it wraps, so it
sits where the network sits: the `Predictor` puts it between the network and the
temperature (`TemperatureScaled(TTA(net))`), and every path that scores through the
Predictor (eval.py, predict.py, calibration after training, Grad-CAM, export, the app) sees
it. `TTA(net, scales=(1.0,), shifts=(0.0,))` is the network itself.

Variants are resampled with `affine_grid`/`grid_sample` (bilinear, border pixels repeated,
as the training augmentation does), one forward pass per variant. The identity variant runs
last and unresampled: hooks that keep a layer's last activation (Grad-CAM) then see the
image itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, cast

import torch
import torch.nn.functional as F
from torch import nn

from pneumonia.signature import Ge, Le, MinLen, check_arguments
from pneumonia.validators import check_tta

DEFAULT_SCALES = (1.0, 0.95, 1.05)
DEFAULT_SHIFTS = (0.0, 0.03)


class TTA(nn.Module):
    """`net` averaged over variants of its input: each scale of `scales` (zoom about the
    centre, 1.05 = 5% larger), and each shift of `shifts` (a fraction of the image size)
    left, right, up and down at scale 1. The output is the logit of the mean of the
    variants' probabilities, computed stably in float32 (log-sum-exp), so sigmoid(output) is
    exactly that mean. The network stays reachable as `.net`."""

    def __init__(
        self,
        net: nn.Module,
        scales: Annotated[Sequence[Annotated[float, Ge(0.5), Le(2.0)]], MinLen(1)] = DEFAULT_SCALES,
        shifts: Annotated[Sequence[Annotated[float, Ge(0.0), Le(0.25)]], MinLen(1)] = DEFAULT_SHIFTS,
    ) -> None:
        super().__init__()
        check_arguments(TTA, {"scales": scales, "shifts": shifts})
        self.net = net
        self.scales = tuple(float(v) for v in scales)
        self.shifts = tuple(float(v) for v in shifts)
        variants = {(s, 0.0, 0.0) for s in self.scales}
        variants |= {(1.0, sx * d, sy * d) for d in self.shifts if d for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1))}
        variants.discard((1.0, 0.0, 0.0))
        self.variants: tuple[tuple[float, float, float], ...] = (*sorted(variants), (1.0, 0.0, 0.0))

    @property
    def features(self) -> nn.Module:
        """The network's conv blocks (Grad-CAM looks for them on a wrapper's `.net`)."""
        return cast(nn.Module, self.net.features)

    def _variant(self, x: torch.Tensor, scale: float, dx: float, dy: float) -> torch.Tensor:
        # output -> input coordinates in [-1, 1]: a zoom by `scale` about the centre, then a
        # shift of the content by (dx, dy) of the image size
        theta = torch.tensor(
            [[1 / scale, 0.0, -2 * dx], [0.0, 1 / scale, -2 * dy]], dtype=torch.float32, device=x.device
        )
        grid = F.affine_grid(theta[None], [1, *x.shape[1:]], align_corners=False)
        grid = grid.to(x.dtype if x.is_floating_point() else torch.float32).expand(x.shape[0], -1, -1, -1)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.variants) == 1:
            return self.net(x)
        logits = []
        for scale, dx, dy in self.variants:
            inp = x if (scale, dx, dy) == (1.0, 0.0, 0.0) else self._variant(x, scale, dx, dy)
            logits.append(self.net(inp).float().reshape(-1))  # not len(x): export keeps the batch dynamic
        z = torch.stack(logits)  # (V, N)
        # logit(mean(sigmoid(z))) = log(mean(sigmoid(z))) - log(mean(sigmoid(-z)))
        return torch.logsumexp(F.logsigmoid(z), 0) - torch.logsumexp(F.logsigmoid(-z), 0)


def with_tta(net: nn.Module, enabled: bool) -> nn.Module:
    """`net` behind a `TTA` wrapper (the default variants) when `enabled`, else `net` itself."""
    return TTA(net) if check_tta(enabled) else net
