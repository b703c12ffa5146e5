"""Download the Kaggle "Chest X-Ray Images (Pneumonia)" data with kagglehub.

    python -m pneumonia.data.download                    # then data/chest_xray points at it
    python -m pneumonia.data.download --link /data/cxr   # or anywhere else
    python train.py data.download=true                    # the same, when data.root is missing

kagglehub (`pip install -e ".[data]"`) needs no token for this public dataset. It keeps the
files in its cache (`~/.cache/kagglehub/datasets/paultimothymooney/chest-xray-pneumonia/`;
set `KAGGLEHUB_CACHE=/big/disk` to put it elsewhere); inside a Kaggle notebook it attaches
the dataset instead of downloading it. `data.root` becomes a symbolic link to the split
folders inside the download, after their image counts were checked against the release.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path

from pneumonia.data.folder import DataLayoutError
from pneumonia.data.layout import check_kaggle_counts, find_data_root
from pneumonia.errors import UserError

log = logging.getLogger(__name__)

DATASET = "paultimothymooney/chest-xray-pneumonia"
SIZE = "about 1.2 GB"


class DownloadError(UserError):
    """The download could not be done; the message says why and what to do."""


def _cache_folder() -> str:
    return os.environ.get("KAGGLEHUB_CACHE", str(Path.home() / ".cache" / "kagglehub"))


def fetch(force: bool = False) -> Path:
    """The dataset's folder in kagglehub's cache, downloaded first if needed; its split set
    found and its counts checked."""
    try:
        import kagglehub
    except ImportError:
        raise DownloadError(
            "downloading the data needs kagglehub: pip install -e '.[data]' (or download it by hand, see docs/data.md)"
        ) from None
    log.warning("Fetching %s (%s) with kagglehub into %s", DATASET, SIZE, _cache_folder())
    try:
        path = Path(kagglehub.dataset_download(DATASET, force_download=force))
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DownloadError(
                f"the disk is full under {_cache_folder()}: free {SIZE} there or set "
                f"KAGGLEHUB_CACHE to a folder on a larger disk, then run again"
            ) from None
        raise DownloadError(
            f"could not download {DATASET}: {_first_line(err)} (no network? download it on "
            f"another machine and set data.root=..., see docs/data.md)"
        ) from None
    except Exception as err:  # kagglehub/requests raise their own types for network and HTTP errors
        raise DownloadError(
            f"could not download {DATASET}: {type(err).__name__}: {_first_line(err)} "
            f"(no network? download it on another machine and set data.root=..., "
            f"see docs/data.md)"
        ) from None
    root = find_data_root(path)
    check_kaggle_counts(root)
    return root


def link(target: Path, link_path: str | Path) -> Path:
    """`link_path` -> `target` (a symbolic link); an existing link is replaced, anything
    else at `link_path` is left alone with an error."""
    link_path = Path(link_path).expanduser()
    if link_path.is_symlink():
        link_path.unlink()
    elif link_path.exists():
        raise DataLayoutError(f"'{link_path}' exists and is not a link: move it away or give another --link")
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(target.resolve(), target_is_directory=True)
    return link_path


def ensure(root: str | Path, *, force: bool = False) -> Path:
    """For `data.download=true`: download when `root` does not exist and link it there."""
    root = Path(root).expanduser()
    if root.exists() and not force:
        return root
    target = fetch(force=force)
    link(target, root)
    log.warning("data.root %s -> %s", root, target)
    return root


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pneumonia.data.download",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--link",
        default="data/chest_xray",
        help="where to put a link to the split folders (default: data/chest_xray, train.py's default data.root)",
    )
    ap.add_argument("--force", action="store_true", help="download again even when kagglehub has it cached")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        target = fetch(force=args.force)
        where = link(target, args.link)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{where} -> {target}\nNow: python train.py"
        + ("" if args.link == "data/chest_xray" else f" data.root={args.link}")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
