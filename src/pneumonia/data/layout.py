"""Finding the one real `train/`, `val/`, `test/` set inside whatever folder a user has.

The Kaggle archive unpacks to `chest_xray/{train,val,test}` plus a nested duplicate
`chest_xray/chest_xray/{train,val,test}` (the same images) and `__MACOSX/` resource forks;
kagglehub's cache adds `.../versions/N/` above it; the Mendeley Data release is
`ChestXRay2017/chest_xray/{train,test}` (no val/). `find_data_root` accepts the top of any of
these, picks the split set, says when a nested copy holds the same images, and refuses a
folder with two different candidate sets.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pneumonia import CLASSES
from pneumonia.data.folder import DataLayoutError, visible, walk_images

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MAX_DEPTH = 4  # kagglehub: <cache>/datasets/<owner>/<name>/versions/<n>/chest_xray/chest_xray
# the Kaggle release (paultimothymooney/chest-xray-pneumonia, version 2): images per split and class
KAGGLE_COUNTS = {
    "train": {"NORMAL": 1341, "PNEUMONIA": 3875},
    "val": {"NORMAL": 8, "PNEUMONIA": 8},
    "test": {"NORMAL": 234, "PNEUMONIA": 390},
}


def is_split_set(folder: Path) -> bool:
    """True for a folder with `train/` or `test/` holding a class folder."""
    return any((folder / split / cls).is_dir() for split in ("train", "test") for cls in CLASSES)


def candidates(root: Path) -> list[Path]:
    """Every split-set folder at or below `root` (shallowest first, `__MACOSX/` and hidden
    folders skipped; the search does not descend into a split set)."""
    found: list[Path] = []
    level = [root]
    for _ in range(MAX_DEPTH + 1):
        following: list[Path] = []
        for folder in level:
            if is_split_set(folder):
                found.append(folder)
                following.extend(sub for sub in _subfolders(folder) if sub.name not in SPLITS)
            else:
                following.extend(_subfolders(folder))
        level = following
    return found


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and visible(p.name))
    except OSError:
        return []


def signature(folder: Path) -> dict[str, list[tuple[str, int]]]:
    """(relative path, size) of every image per split: equal signatures = the same data."""
    sig = {}
    for split in SPLITS:
        if (folder / split).is_dir():
            base = folder / split
            sig[split] = [(os.path.relpath(p, base), os.path.getsize(p)) for p in walk_images(base)]
    return sig


def find_data_root(root: str | Path) -> Path:
    """The folder that holds the split folders, at or below `root`; `root` itself when it has
    none (the DataModule's checks then say what is missing)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return root
    found = candidates(root)
    if len(found) <= 1:
        return found[0] if found else root
    first, rest = found[0], found[1:]
    first_sig = signature(first)
    different = [c for c in rest if signature(c) != first_sig]
    if different:
        raise DataLayoutError(
            f"data.root '{root}' holds {len(found)} different sets of split folders: "
            f"{', '.join(str(c) for c in [first, *different])}; point data.root at the one to use"
        )
    log.info(
        "%s: the nested %s hold the same images as %s; using %s", root, ", ".join(str(c) for c in rest), first, first
    )
    return first


def count_images(root: Path) -> dict[str, dict[str, int]]:
    return {
        split: {cls: len(walk_images(root / split / cls)) if (root / split / cls).is_dir() else 0 for cls in CLASSES}
        for split in SPLITS
    }


def check_kaggle_counts(root: Path) -> None:
    """A downloaded Kaggle release must have every image: a partial download is an error,
    never a smaller dataset."""
    counts = count_images(root)
    missing = [
        f"{split}/{cls} has {counts[split][cls]} of {n}"
        for split, per_class in KAGGLE_COUNTS.items()
        for cls, n in per_class.items()
        if counts[split][cls] != n
    ]
    if missing:
        raise DataLayoutError(
            f"the download in '{root}' is not the complete Kaggle release ({'; '.join(missing)}): it was "
            f"interrupted or the upstream layout changed; run `python -m pneumonia.data.download --force` "
            f"to fetch it again"
        )
