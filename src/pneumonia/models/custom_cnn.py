"""The custom CNN of the original Keras notebook, generalised to any depth.

The original: five blocks of two 3x3 convs (16, 32, 64, 96, 128 filters), a 2x2 max-pool
after each block; in blocks 4 and 5 the first conv is dilated (2) and the second has no
padding; then dense 256, dropout 0.5 and one output. At 3x150x150 it has 764,241
parameters, the same count Keras prints for the notebook's model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pneumonia.errors import ConfigError

ORIGINAL_WIDTHS = (16, 32, 64, 96, 128, 160, 192)


class CustomCNN(nn.Module):
    """Conv blocks -> flatten -> dense -> dropout -> one logit (pneumonia vs normal).

    `depth` blocks take the first `depth` entries of `widths`. `dilated_blocks` (1-based)
    are the blocks built like the original's 4th and 5th: dilated first conv, unpadded
    second conv. The net returns logits; the loss applies the sigmoid (numerically safer
    than Keras' sigmoid + BCE).
    """

    def __init__(
        self,
        depth: int = 5,
        widths: Sequence[int] = ORIGINAL_WIDTHS,
        dilated_blocks: Sequence[int] = (4, 5),
        in_channels: int = 3,
        image_size: int = 150,
        dense_units: int = 256,
        dropout: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        widths = list(widths)
        for key, value in (("depth", depth), ("image_size", image_size), ("dense_units", dense_units)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"model.{key}={value!r} must be an integer")
        if not 1 <= depth <= len(widths):
            raise ConfigError(
                f"model.depth={depth} needs 1..{len(widths)}: model.widths={widths} has one entry "
                f"per block (give more, e.g. model.widths=[{','.join(map(str, ORIGINAL_WIDTHS))}])"
            )
        if in_channels not in (1, 3):
            raise ConfigError(f"model.in_channels={in_channels} must be 1 (grayscale) or 3 (RGB)")
        if dense_units < 1:
            raise ConfigError(f"model.dense_units={dense_units} must be >= 1")
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ConfigError(f"model.widths={widths} must be integers >= 1 (filters per block)")
        if any(isinstance(b, bool) or not isinstance(b, int) for b in dilated_blocks):
            raise ConfigError(f"model.dilated_blocks={list(dilated_blocks)} must be block numbers (1-based integers)")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")

        blocks: list[nn.Module] = []
        channels, size = in_channels, image_size
        for index in range(1, depth + 1):
            width = widths[index - 1]
            dilated = index in dilated_blocks
            blocks.append(_conv_block(channels, width, dilated=dilated, batch_norm=batch_norm))
            channels = width
            size = (size - 2 if dilated else size) // 2  # the unpadded conv loses 2 px, then pool
            if size < 1:
                raise ConfigError(
                    f"model.depth={depth} is too deep for data.image_size={image_size}: "
                    f"block {index} would shrink the feature map to nothing"
                )
        self.features = nn.Sequential(*blocks)
        self.feature_size = size
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * size * size, dense_units),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dense_units, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


def _conv_block(in_ch: int, out_ch: int, *, dilated: bool, batch_norm: bool) -> nn.Sequential:
    first = nn.Conv2d(in_ch, out_ch, 3, padding=2 if dilated else 1, dilation=2 if dilated else 1, bias=not batch_norm)
    second = nn.Conv2d(out_ch, out_ch, 3, padding=0 if dilated else 1, bias=not batch_norm)
    layers: list[nn.Module] = []
    for conv in (first, second):
        layers.append(conv)
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)
