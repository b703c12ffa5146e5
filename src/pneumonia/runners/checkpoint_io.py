"""`AtomicCheckpointIO`: how the Trainer writes checkpoints (best.ckpt, last.ckpt, SWA's).

Lightning's `TorchCheckpointIO` writes through an fsspec transaction; on a full disk that
left a partial `best.ckpt` under its final name and an `OSError` traceback. Here a local
checkpoint is written to a temporary name beside it and renamed over the final name
(`pneumonia.io.atomic_write`): a full disk is one line naming the folder and the space the
checkpoint needs, and the previous checkpoint under that name stays intact. Remote paths
(s3://...) keep Lightning's way.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from pneumonia.io import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # a remote file system: Lightning's own way
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
        return None
