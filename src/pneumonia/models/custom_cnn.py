"""The custom CNN of the original Keras notebook, generalised to any depth.

The original: five blocks of two 3x3 convs (16, 32, 64, 96, 128 filters), a 2x2 max-pool
after each block; in blocks 4 and 5 the first conv is dilated (2) and the second has no
padding; then dense 256, dropout 0.5 and one output. At 3x150x150 it has 764,241
parameters, the same count Keras prints for the notebook's model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import torch
from torch import nn

from pneumonia.errors import ConfigError
from pneumonia.models.thread_split import split_run
from pneumonia.signature import Ge, Lt, MinLen, check_arguments

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
        depth: Annotated[int, Ge(1)] = 5,
        widths: Annotated[Sequence[Annotated[int, Ge(1)]], MinLen(1)] = ORIGINAL_WIDTHS,
        dilated_blocks: Sequence[int] = (4, 5),
        in_channels: Literal[1, 3] = 3,
        image_size: int = 150,
        dense_units: Annotated[int, Ge(1)] = 256,
        dropout: Annotated[float, Ge(0), Lt(1)] = 0.5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        # the signature declares each argument's type and range; the config layer adds the `model.` prefix
        check_arguments(CustomCNN, locals())
        widths = list(widths)
        if depth > len(widths):
            raise ConfigError(
                f"depth={depth} needs 1..{len(widths)}: widths={widths} has one entry "
                f"per block (give more, e.g. widths=[{','.join(map(str, ORIGINAL_WIDTHS))}])"
            )

        blocks: list[nn.Module] = []
        channels: int = in_channels
        size = image_size
        for index in range(1, depth + 1):
            width = widths[index - 1]
            dilated = index in dilated_blocks
            blocks.append(_conv_block(channels, width, dilated=dilated, batch_norm=batch_norm))
            channels = width
            size = (size - 2 if dilated else size) // 2  # the unpadded conv loses 2 px, then pool
            if size < 1:
                raise ConfigError(
                    f"depth={depth} is too deep for image_size={image_size}: "
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

    # `split_run`'s threads for the conv blocks while training (set by the LightningModule,
    # `module.split_batch`); 0 = off. Not a weight: checkpoints do not carry it.
    split_workers: int = 0

    @property
    def splits_batch(self) -> bool:
        """Whether the conv blocks may run as chunks of the batch on threads (`split_run`):
        no batch statistics in them (batch norm would see a chunk, not the batch), no randomness."""
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.features.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_workers > 1 and self.training and not _hooked(self.features):
            return self.head(split_run(self.features, x, self.split_workers)).squeeze(1)
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


def _hooked(module: nn.Module) -> bool:
    """Whether a hook watches a layer (Grad-CAM, captum, a user's probe): hooks see one graph,
    which `split_run`'s chunks would hide from them."""
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in module.modules()
    )
