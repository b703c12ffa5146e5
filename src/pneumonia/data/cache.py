"""Decode every image once (with the preprocessing preset) into one uint8 tensor,
optionally persisted on disk.

Decoding and resizing JPEGs with PIL is the bottleneck of a per-sample pipeline on a
small CPU (about 35-40 images/s end to end on 2 cores, see README "Performance"); from
a decoded uint8 tensor a batch is one index operation. 5216 images at 224 px grayscale
take 262 MB (785 MB as RGB).

The disk cache file name is a hash of the file list, each file's size and mtime, the
preset (image size, channels, resize and scaling) and the cache format: a changed, added or removed file
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

from pneumonia.data.preprocess import Preprocess
from pneumonia.io import atomic_torch_save

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass
class DecodedImages:
    """Images as one (N, C, S, S) uint8 tensor; `bad` lists files that failed to decode."""

    images: torch.Tensor
    paths: tuple[str, ...]
    labels: torch.Tensor
    bad: list[tuple[str, str]] = field(default_factory=list)


def cache_key(paths: tuple[str, ...], preprocess: Preprocess) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_FORMAT, preprocess.describe()]).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def decode_images(
    paths: tuple[str, ...],
    labels: tuple[int, ...],
    preprocess: Preprocess,
    *,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
) -> DecodedImages:
    """`preprocess.load` every path (or load them all from `cache_dir`); undecodable files
    land in `bad`."""
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir).expanduser() / f"images-{cache_key(paths, preprocess)}.pt"
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

    size = preprocess.image_size
    out = torch.empty((len(paths), preprocess.channels, size, size), dtype=torch.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    bad: list[tuple[str, str]] = []

    def work(i: int) -> None:
        try:
            out[i] = torch.from_numpy(preprocess.load(paths[i]))
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
    if cache_file is not None:  # atomic: a killed run never leaves half a cache
        atomic_torch_save({"images": decoded.images, "paths": list(decoded.paths),
                           "labels": decoded.labels, "bad": [list(b) for b in bad]}, cache_file)
    return decoded
