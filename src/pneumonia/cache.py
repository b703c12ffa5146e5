"""See and clear the decoded-image caches (`data.cache_dir`).

    python -m pneumonia.cache                      # each cache: size, images, last used; the total
    python -m pneumonia.cache --clear              # delete them all
    python -m pneumonia.cache --clear --older-than 30   # only those unused for 30 days
    python -m pneumonia.cache /other/cache/dir     # a data.cache_dir of your own

A cache is a folder `images-<key>/` (`pneumonia.data.cache`): one per file list, image size
and channel count, so trying other sizes or data roots adds caches beside the old ones. The
default location, `default_cache_dir()`, does not depend on the folder a command runs from:
`$PNEUMONIA_CACHE_DIR`, else `$XDG_CACHE_HOME/pneumonia/images`, else
`~/.cache/pneumonia/images`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
    return (f"decoded-image caches in {Path(cache_dir).expanduser()}: {len(found)}, {human(total)} "
            f"(python -m pneumonia.cache lists and clears them)")


def _remove_unless_busy(folder: Path) -> bool:
    """Delete a cache folder unless a run holds its lock (it is being built or opened)."""
    import fcntl

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pneumonia.cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("cache_dir", nargs="?", default=None,
                        help=f"the data.cache_dir to look in (default: {default_cache_dir()})")
    parser.add_argument("--clear", action="store_true", help="delete the caches (they are rebuilt when needed)")
    parser.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                        help="with --clear: only caches not used for DAYS days")
    args = parser.parse_args(argv)
    cache_dir = Path(args.cache_dir or default_cache_dir()).expanduser()
    if args.older_than is not None and (args.older_than < 0 or not args.clear):
        print("error: --older-than DAYS goes with --clear and must be >= 0", file=sys.stderr)
        return 2
    if cache_dir.exists() and not cache_dir.is_dir():
        print(f"error: '{cache_dir}' is a file, not a cache folder", file=sys.stderr)
        return 2
    found = entries(cache_dir)
    if not found:
        print(f"No decoded-image caches in {cache_dir}")
        return 0
    now = time.time()
    if args.clear:
        cutoff = None if args.older_than is None else now - args.older_than * 86400
        gone, busy = [], []
        for e in (e for e in found if cutoff is None or e.last_used < cutoff):
            (gone if _remove_unless_busy(e.folder) else busy).append(e)
        print(f"Deleted {len(gone)} of {len(found)} caches in {cache_dir}: {human(sum(e.bytes for e in gone))} freed"
              + (f"; kept {len(busy)} that a running command is writing" if busy else ""))
        return 0
    print(f"{'cache':<40} {'size':>9} {'images':>7} {'decoded to':>14} {'last used':>10}")
    for e in found:
        days = (now - e.last_used) / 86400
        used = "today" if days < 1 else f"{days:.0f} days"
        images = str(e.images) if e.complete else "partial"
        print(f"{e.folder.name:<40} {human(e.bytes):>9} {images:>7} {e.image_size:>14} {used:>10}")
    print(f"{len(found)} caches, {human(sum(e.bytes for e in found))} in {cache_dir}; "
          f"clear with: python -m pneumonia.cache --clear [--older-than DAYS]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
