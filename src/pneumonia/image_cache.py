"""Decode every image once into one uint8 tensor, optionally persisted on disk.

Decoding and resizing JPEGs with PIL is the bottleneck of a per-sample pipeline on a
small CPU (about 35-40 images/s end to end on 2 cores, see README "Performance"); from
a decoded uint8 tensor a batch is one index operation. 5216 images at 224 px grayscale
take 262 MB (785 MB as RGB).

The disk cache file name is a hash of the file list, each file's size and mtime, the
image size, the channel count and the cache format: a changed, added or removed file
gives a new key, so a changed dataset is never served stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass
class DecodedImages:
    """Images as one (N, C, S, S) uint8 tensor; `bad` lists files that failed to decode."""

    images: torch.Tensor
    paths: tuple[str, ...]
    labels: torch.Tensor
    bad: list[tuple[str, str]] = field(default_factory=list)


def load_image(path: str, image_size: int, channels: int) -> np.ndarray:
    """One image as a (C, S, S) uint8 array, whatever its mode and size.

    16-bit and 32-bit integer images are scaled to 8 bits by their range (PIL's own
    conversion would clip them white); palette and alpha images are flattened.
    """
    with Image.open(path) as img:
        if img.format == "JPEG" and min(img.size) >= 2 * image_size:
            # DCT-domain downscaling: decodes a 2916 px original several times faster
            img.draft("L" if channels == 1 else "RGB", (image_size, image_size))
        img.load()
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            arr = np.asarray(img, dtype=np.float32)
            top = 65535.0 if arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
        if img.mode in ("PA", "LA", "RGBA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, img)
        img = img.convert("L" if channels == 1 else "RGB")
        img = img.resize((image_size, image_size), Image.BILINEAR)
        arr = np.array(img, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def cache_key(paths: tuple[str, ...], image_size: int, channels: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_FORMAT, image_size, channels]).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def decode_images(
    paths: tuple[str, ...],
    labels: tuple[int, ...],
    image_size: int,
    channels: int,
    *,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
) -> DecodedImages:
    """Decode `paths` (or load them from `cache_dir`); undecodable files land in `bad`."""
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir).expanduser() / f"images-{cache_key(paths, image_size, channels)}.pt"
        if cache_file.is_file():
            try:
                stored = torch.load(cache_file, weights_only=True)
                log.info("Loaded %d decoded images from cache %s", len(stored["paths"]), cache_file)
                return DecodedImages(
                    stored["images"], tuple(stored["paths"]), stored["labels"],
                    [tuple(b) for b in stored["bad"]],
                )
            except Exception as err:  # a corrupt cache is rebuilt, never trusted
                log.warning("Ignoring unreadable image cache %s (%s)", cache_file, err)

    out = torch.empty((len(paths), channels, image_size, image_size), dtype=torch.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    bad: list[tuple[str, str]] = []

    def work(i: int) -> None:
        try:
            out[i] = torch.from_numpy(load_image(paths[i], image_size, channels))
            ok[i] = True
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... on bad files
            bad.append((paths[i], f"{type(err).__name__}: {err}"))

    # PIL releases the GIL while decoding and resizing, so threads scale with cores
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        list(pool.map(work, range(len(paths))))
    bad.sort()
    keep = torch.from_numpy(np.flatnonzero(ok))
    decoded = DecodedImages(
        out[keep] if len(keep) < len(paths) else out,
        tuple(paths[i] for i in keep.tolist()),
        torch.tensor([labels[i] for i in keep.tolist()], dtype=torch.long),
        bad,
    )
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        torch.save({"images": decoded.images, "paths": list(decoded.paths),
                    "labels": decoded.labels, "bad": [list(b) for b in bad]}, tmp)
        os.replace(tmp, cache_file)  # atomic: a killed run never leaves half a cache
    return decoded
