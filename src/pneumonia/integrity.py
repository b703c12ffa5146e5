"""A checksum of a checkpoint's weights, stored in the checkpoint itself: a flipped byte in
a weight tensor is noticed on load instead of scoring silently wrong.

The digest is blake2b (256 bits) over the state dict in sorted key order: for each entry
its key, dtype, shape and raw bytes. It covers the LightningModule's whole `state_dict`
(the network and the `threshold` buffer), not the optimizer state. Leaf module: everything
that writes or reads checkpoints may import it.
"""

from __future__ import annotations

import hashlib
from typing import Any

DIGEST_KEY = "weights_digest"  # checkpoint key: {"algorithm": ALGORITHM, "hexdigest": ...}
ALGORITHM = "blake2b-256 over state_dict (sorted keys; key, dtype, shape, bytes)"


def weights_digest(state_dict: dict[str, Any]) -> str:
    """The hex digest of `state_dict` (tensors hashed by their bytes, on the CPU)."""
    import torch

    digest = hashlib.blake2b(digest_size=32)
    for key in sorted(state_dict):
        value = state_dict[key]
        digest.update(str(key).encode() + b"\0")
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode() + b"\0")
            digest.update(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]  # numpy types its buffer protocol on Python >= 3.12 only
        else:
            digest.update(repr(value).encode() + b"\0")
    return digest.hexdigest()


def seal(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Store the digest of `checkpoint["state_dict"]` in `checkpoint` (in place); returns it."""
    checkpoint[DIGEST_KEY] = {"algorithm": ALGORITHM, "hexdigest": weights_digest(checkpoint["state_dict"])}
    return checkpoint


def stored_digest(checkpoint: dict[str, Any]) -> str | None:
    """The digest the checkpoint was written with; None for one written before digests."""
    entry = checkpoint.get(DIGEST_KEY)
    return entry.get("hexdigest") if isinstance(entry, dict) else None
