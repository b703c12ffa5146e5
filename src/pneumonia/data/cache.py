"""Decode every image once (with the preprocessing preset) into one uint8 tensor, kept on
disk as a memory-mapped file.

Decoding and resizing JPEGs with PIL is the bottleneck of a per-sample pipeline on a
small CPU (about 35-40 images/s end to end on 2 cores, see README "Performance"); from
a decoded uint8 tensor a batch is one index operation. 5216 images at 224 px grayscale
take 262 MB (785 MB as RGB); ChestX-ray14's 112k images at 224 px take 5.6 GB.

On disk a cache is a folder `images-<key>/` with

- `images.u8`: the (N, C, S, S) uint8 array, row i = file i, written in chunks while
  decoding and read back through a memory map (copy-on-write, random access): a dataset larger than
  RAM trains with the OS paging it in, and several runs (or DDP processes) on one machine
  share one copy in the page cache;
- `progress.json`: the chunks already written and the files that failed, so an interrupted
  build resumes where it stopped;
- `meta.json`: written last, when every chunk is in: the cache is complete. It holds a
  CRC-32 of each chunk of `images.u8`, taken from the bytes as they were written and
  checked every time the cache is opened: a chunk changed on disk is decoded again.

The key is a hash of the file list, each file's size and mtime, the preset's decode step
(image size, channels, resize and scaling: `Preprocess.decode_description()`) and the
cache format: a changed, added or removed file gives a new key, so a changed dataset is
never served stale. `data.normalize` is not in the key: it acts on the float batch, after
the cache, so every value of it reads the same decoded bytes. A build holds a lock on the
folder, so two processes asked for the same new cache decode it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import mmap
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumonia.data.preprocess import Preprocess
from pneumonia.errors import file_error
from pneumonia.io import atomic_write

log = logging.getLogger(__name__)

CACHE_FORMAT = 3  # 3: per-chunk CRC-32 in meta.json
CHUNK = 1024  # images decoded and written between two progress records


@dataclass
class DecodedImages:
    """Images as one (N, C, S, S) uint8 tensor (row i = `paths[i]`, memory-mapped when it
    comes from a disk cache); `ok` marks the rows that decoded, `bad` lists the others with
    the reason. Unreadable files keep their (zero) row, so no copy is ever needed."""

    images: torch.Tensor
    paths: tuple[str, ...]
    labels: torch.Tensor
    ok: torch.Tensor
    bad: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rows(self) -> torch.Tensor:
        """Indices of the rows that decoded."""
        return torch.nonzero(self.ok).flatten()


def cache_key(paths: tuple[str, ...], preprocess: Preprocess) -> str:
    h = hashlib.sha256()
    # the pixel limit decides which rows decode, so it is part of the key
    h.update(json.dumps([CACHE_FORMAT, preprocess.decode_description(), preprocess.max_pixels]).encode())
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
    """`preprocess.load` every path, into a memory-mapped cache under `cache_dir` (reused
    when complete, resumed when interrupted) or into memory when `cache_dir` is None."""
    size, channels = preprocess.image_size, preprocess.channels
    shape = (len(paths), channels, size, size)
    label_tensor = torch.tensor(list(labels), dtype=torch.long)
    if cache_dir is None:
        images = torch.zeros(shape, dtype=torch.uint8)
        ok = np.zeros(len(paths), dtype=bool)
        bad = _decode_rows(paths, preprocess, images.numpy(), ok, range(len(paths)), threads)
        return DecodedImages(images, tuple(paths), label_tensor, torch.from_numpy(ok), sorted(bad))

    folder = Path(cache_dir).expanduser() / f"images-{cache_key(paths, preprocess)}"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the cache complete
        try:
            meta = _read_complete(folder, shape, paths)
            if meta is None:
                meta = _build(folder, paths, preprocess, shape, threads)
                log.info(
                    "Decoded %d images into %s (%s); %s",
                    len(paths),
                    folder,
                    human(int(np.prod(shape))),
                    summary_line(cache_dir),
                )
            else:
                log.info("Loaded %d decoded images from cache %s", len(paths), folder)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    images = torch.from_numpy(_map(folder / "images.u8", shape))
    return DecodedImages(
        images, tuple(paths), label_tensor, torch.tensor(meta["ok"], dtype=torch.bool), [tuple(b) for b in meta["bad"]]
    )


def _map(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The cache file as a copy-on-write memory map (pages shared with every other reader,
    never written back), advised for random access: batches pick rows at random. In a loop
    that only reads batches of 64 from the 100k-image, 224 px cache of benchmarks/scale.py,
    the default readahead mapped 1.46 GB of file pages in 20 batches (64 MB read);
    with MADV_RANDOM, 225 MB in 66 batches (211 MB read)."""
    mapped = np.memmap(path, dtype=np.uint8, mode="c", shape=shape)
    if hasattr(mmap, "MADV_RANDOM"):
        mapped._mmap.madvise(mmap.MADV_RANDOM)  # type: ignore[attr-defined]  # numpy.memmap's own mmap, untyped
    return mapped


def _read_complete(folder: Path, shape: tuple[int, ...], paths: tuple[str, ...]) -> dict | None:
    """The cache's meta.json when the cache is complete and sound, else None (rebuilt or
    resumed). A chunk whose CRC-32 differs from the one recorded when it was written is
    decoded again: the sound chunks become a progress record the build resumes from."""
    meta_file, data_file = folder / "meta.json", folder / "images.u8"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        sound = (
            meta.get("format") == CACHE_FORMAT
            and tuple(meta["shape"]) == shape
            and data_file.stat().st_size == int(np.prod(shape))
            and len(meta["ok"]) == shape[0]
            and len(meta["crc32"]) == _chunks(shape[0])
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("Ignoring unreadable image cache %s (%s)", folder, err)
        sound = False
    if not sound:  # a damaged cache is rebuilt, never trusted
        meta_file.unlink(missing_ok=True)
        (folder / "progress.json").unlink(missing_ok=True)
        return None
    changed = [c for c, (stored, now) in enumerate(zip(meta["crc32"], _checksums(data_file, shape))) if stored != now]
    if not changed:
        return meta
    log.warning(
        "Image cache %s failed its checksum (%d of %d chunk(s) changed on disk): rebuilding them",
        folder,
        len(changed),
        len(meta["crc32"]),
    )
    row = {p: i for i, p in enumerate(paths)}
    progress = {
        "done": [c for c in range(len(meta["crc32"])) if c not in changed],
        "bad": [b for b in meta["bad"] if row.get(b[0], 0) // CHUNK not in changed],
        "crc32": {str(c): v for c, v in enumerate(meta["crc32"]) if c not in changed},
    }
    record = json.dumps(progress)
    atomic_write(folder / "progress.json", lambda tmp: tmp.write_text(record))
    meta_file.unlink()
    return None


def _chunks(n: int) -> int:
    return -(-n // CHUNK)


def _checksums(data_file: Path, shape: tuple[int, ...]) -> list[int]:
    """CRC-32 of each chunk of `images.u8`, read through a memory map (no copy). zlib's
    crc32 is the cheapest check in the standard library: 0.15-0.23 s for the 117 MB train
    cache (5216 x 150 x 150) on 2 busy cores, against 0.40 s for blake2b."""
    row_bytes, n = int(np.prod(shape[1:])), shape[0]
    if n * row_bytes == 0:
        return [0] * _chunks(n)
    with open(data_file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            return [
                zlib.crc32(view[c * CHUNK * row_bytes : min((c + 1) * CHUNK, n) * row_bytes]) for c in range(_chunks(n))
            ]
        finally:
            view.release()


def _build(
    folder: Path, paths: tuple[str, ...], preprocess: Preprocess, shape: tuple[int, ...], threads: int | None
) -> dict:
    """Decode into `images.u8` chunk by chunk, recording progress; resume from a record."""
    from tqdm.auto import tqdm

    data_file, progress_file = folder / "images.u8", folder / "progress.json"
    n_bytes = int(np.prod(shape))
    progress: dict[str, Any] = {"done": [], "bad": [], "crc32": {}}
    if progress_file.is_file() and data_file.is_file() and data_file.stat().st_size == n_bytes:
        try:
            progress = json.loads(progress_file.read_text())
            progress.setdefault("crc32", {})
            if any(str(c) not in progress["crc32"] for c in progress["done"]):
                raise ValueError("a chunk without its checksum")
        except (ValueError, TypeError, KeyError, AttributeError):
            progress = {"done": [], "bad": [], "crc32": {}}
    else:
        with open(data_file, "wb") as f:
            f.truncate(n_bytes)  # sparse: no disk written for rows not decoded yet
    ok = np.zeros(shape[0], dtype=bool)
    done = set(progress["done"])
    bad_paths = {p for p, _ in progress["bad"]}
    for chunk in done:
        rows = range(chunk * CHUNK, min((chunk + 1) * CHUNK, shape[0]))
        ok[list(rows)] = [paths[i] not in bad_paths for i in rows]
    todo = [c for c in range(_chunks(shape[0])) if c not in done]
    if done:
        log.info(
            "Resuming the image cache %s: %d of %d chunks were already decoded",
            folder,
            len(done),
            len(done) + len(todo),
        )
    row_bytes = int(np.prod(shape[1:]))
    # each chunk is decoded into a buffer and written with one pwrite (no mapping while
    # building: the process' memory stays one chunk, not the dataset)
    buffer = np.zeros((CHUNK, *shape[1:]), dtype=np.uint8)
    with (
        tqdm(
            total=shape[0],
            initial=shape[0] - sum(min(CHUNK, shape[0] - c * CHUNK) for c in todo),
            desc="decode",
            unit="img",
            disable=None if shape[0] > CHUNK else True,
        ) as bar,
        open(data_file, "r+b") as f,
    ):
        for chunk in todo:
            start, stop = chunk * CHUNK, min((chunk + 1) * CHUNK, shape[0])
            buffer[:] = 0
            bad = _decode_rows(paths, preprocess, buffer, ok, range(start, stop), threads, offset=start)
            rows_bytes = buffer[: stop - start].tobytes()
            os.pwrite(f.fileno(), rows_bytes, start * row_bytes)
            progress["crc32"][str(chunk)] = zlib.crc32(rows_bytes)
            progress["bad"].extend(bad)
            progress["done"].append(chunk)  # after the rows were written
            record = json.dumps(progress)
            atomic_write(progress_file, lambda tmp: tmp.write_text(record))  # noqa: B023  (called at once)
            bar.update(stop - start)
    meta = {
        "format": CACHE_FORMAT,
        "shape": list(shape),
        "ok": ok.tolist(),
        "bad": sorted(progress["bad"]),
        "crc32": [progress["crc32"][str(c)] for c in range(_chunks(shape[0]))],
    }
    text = json.dumps(meta)
    atomic_write(folder / "meta.json", lambda tmp: tmp.write_text(text))
    progress_file.unlink(missing_ok=True)
    return meta


def _decode_rows(
    paths: tuple[str, ...],
    preprocess: Preprocess,
    out: np.ndarray,
    ok: np.ndarray,
    rows: range,
    threads: int | None,
    offset: int = 0,
) -> list[tuple[str, str]]:
    """Decode `rows` of `paths` into `out[row - offset]`; returns the files that failed,
    with the reason."""
    bad: list[tuple[str, str]] = []

    def work(i: int) -> None:
        try:
            out[i - offset] = preprocess.load(paths[i])
            ok[i] = True
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... on bad files
            bad.append((paths[i], file_error(err)))

    # PIL releases the GIL while decoding (large JPEGs gain from threads; 224 px ones decode
    # at about the same rate serially on 2 cores, ~5000 images/s at 112 px)
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        list(pool.map(work, rows))
    return bad


# ---- the cache folders: where, which, how large (`python -m pneumonia.tools.cache` lists and clears them)
PREFIX = "images-"


def default_cache_dir() -> str:
    """Where decoded images are cached unless `data.cache_dir` says otherwise."""
    if os.environ.get("PNEUMONIA_CACHE_DIR"):
        return str(Path(os.environ["PNEUMONIA_CACHE_DIR"]).expanduser())
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base).expanduser() / "pneumonia" / "images")


@dataclass
class CacheEntry:
    folder: Path
    bytes: int
    images: int | None  # None: the build was interrupted (it resumes on the next run)
    image_size: str
    last_used: float  # the time of the last run that opened it (its lock file is rewritten each time)

    @property
    def complete(self) -> bool:
        return self.images is not None


def entries(cache_dir: str | Path) -> list[CacheEntry]:
    """The caches under `cache_dir`, least recently used first."""
    root = Path(cache_dir).expanduser()
    found = []
    for folder in sorted(root.glob(f"{PREFIX}*")) if root.is_dir() else []:
        if not folder.is_dir():
            continue
        files = [f for f in folder.iterdir() if f.is_file()]
        # st_blocks: the disk used (a cache file is sparse until every chunk is written)
        size = sum(f.stat().st_blocks * 512 for f in files)
        images, image_size = None, "?"
        try:
            shape = json.loads((folder / "meta.json").read_text())["shape"]
            images, image_size = int(shape[0]), f"{shape[-1]} px x {shape[1]} ch"
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            pass
        used = max((f.stat().st_mtime for f in files), default=folder.stat().st_mtime)
        found.append(CacheEntry(folder, size, images, image_size, used))
    return sorted(found, key=lambda e: e.last_used)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def summary_line(cache_dir: str | Path) -> str:
    """One line for the logs: how much the caches under `cache_dir` hold, and how to clear them."""
    found = entries(cache_dir)
    total = sum(e.bytes for e in found)
    return (
        f"decoded-image caches in {Path(cache_dir).expanduser()}: {len(found)}, {human(total)} "
        f"(python -m pneumonia.tools.cache lists and clears them)"
    )


def remove_unless_busy(folder: Path) -> bool:
    """Delete a cache folder unless a run holds its lock (it is being built or opened)."""
    import shutil

    try:
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(folder, ignore_errors=True)
            return True
    except BlockingIOError:
        return False
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return True
