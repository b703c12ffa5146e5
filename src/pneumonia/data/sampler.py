"""Batches by index: a dataset that returns a whole batch in one gather, and a batch
sampler that shuffles by (seed, epoch) and shards over DDP ranks without padding."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """The seed of one epoch's random stream (`stream` tells shuffling and augmentation
    apart). Derived from (seed, epoch) alone, not from a running generator, so a run
    resumed at an epoch boundary draws exactly what the uninterrupted run drew."""
    return seed * 1_000_003 + epoch + stream


class IndexedImages(Dataset):
    """Indexed with a list of indices, returns a whole batch: one gather, no collate."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        self.images, self.labels, self.indices = images, labels, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # on a device (`data.device_resident`) the batch's positions go there without waiting
        # for it (a pageable host-to-device copy is staged at once) and the gather runs
        # there: no host sync per batch; on the CPU the same lines gather in place
        positions = torch.as_tensor(batch, dtype=torch.long).to(self.indices.device, non_blocking=True)
        idx = self.indices[positions]
        return self.images[idx], self.labels[idx], idx

    def nbytes(self) -> int:
        """Bytes of the images, labels and indices (what moving them to a device costs)."""
        return sum(t.numel() * t.element_size() for t in (self.images, self.labels, self.indices))

    def to(self, device: torch.device | str, moved: dict[int, torch.Tensor] | None = None) -> IndexedImages:
        """The same split with its tensors on `device`. `moved` maps id(host tensor) to its
        device copy, so that splits sharing one decoded tensor (train and a validation split
        carved out of it) share one device copy too."""
        moved = {} if moved is None else moved

        def move(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in moved:
                moved[id(t)] = t.to(device)
            return moved[id(t)]

        return IndexedImages(move(self.images), move(self.labels), move(self.indices))


class EpochBatchSampler:
    """Index batches, shuffled with (seed, epoch) and sharded over ranks without padding.

    Training shards are cut to equal length (every rank must take the same number of
    steps); evaluation shards are disjoint and cover every image exactly once, so synced
    metrics equal one process'.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
            order = order[: self.n - self.n % self.world_size] if self.world_size > 1 else order
        else:
            order = list(range(self.n))
        return order[self.rank :: self.world_size]

    def _stop(self, size: int) -> int:
        remainder = size % self.batch_size
        # a training batch of one image breaks batch norm ("expected more than 1 value per
        # channel"): drop it, as if drop_last were set for that one image
        if self.drop_last or (self.shuffle and remainder == 1 and size > 1):
            return size - remainder
        return size

    def __iter__(self):
        shard = self._shard()
        for start in range(0, self._stop(len(shard)), self.batch_size):
            yield shard[start : start + self.batch_size]

    def __len__(self) -> int:
        return -(-self._stop(len(self._shard())) // self.batch_size)
