"""See and clear the decoded-image caches (`data.cache_dir`).

    python -m pneumonia.tools.cache                           # each cache: size, images, last used; the total
    python -m pneumonia.tools.cache --clear                   # delete them all
    python -m pneumonia.tools.cache --clear --older-than 30   # only those unused for 30 days
    python -m pneumonia.tools.cache /other/cache/dir          # a data.cache_dir of your own

A cache is a folder `images-<key>/` (`pneumonia.data.cache`): one per file list, image size
and channel count, so trying other sizes or data roots adds caches beside the old ones. The
default location, `default_cache_dir()`, does not depend on the folder a command runs from:
`$PNEUMONIA_CACHE_DIR`, else `$XDG_CACHE_HOME/pneumonia/images`, else
`~/.cache/pneumonia/images`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pneumonia.data.cache import CacheEntry, default_cache_dir, entries, human, remove_unless_busy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pneumonia.tools.cache", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "cache_dir", nargs="?", default=None, help=f"the data.cache_dir to look in (default: {default_cache_dir()})"
    )
    parser.add_argument("--clear", action="store_true", help="delete the caches (they are rebuilt when needed)")
    parser.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="DAYS",
        help="with --clear: only caches not used for DAYS days",
    )
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
        gone: list[CacheEntry] = []
        busy: list[CacheEntry] = []
        for e in (e for e in found if cutoff is None or e.last_used < cutoff):
            (gone if remove_unless_busy(e.folder) else busy).append(e)
        print(
            f"Deleted {len(gone)} of {len(found)} caches in {cache_dir}: {human(sum(e.bytes for e in gone))} freed"
            + (f"; kept {len(busy)} that a running command is writing" if busy else "")
        )
        return 0
    print(f"{'cache':<40} {'size':>9} {'images':>7} {'decoded to':>14} {'last used':>10}")
    for e in found:
        days = (now - e.last_used) / 86400
        used = "today" if days < 1 else f"{days:.0f} days"
        images = str(e.images) if e.complete else "partial"
        print(f"{e.folder.name:<40} {human(e.bytes):>9} {images:>7} {e.image_size:>14} {used:>10}")
    print(
        f"{len(found)} caches, {human(sum(e.bytes for e in found))} in {cache_dir}; "
        f"clear with: python -m pneumonia.tools.cache --clear [--older-than DAYS]"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
