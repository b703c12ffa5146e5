"""Find the images of one split (`<root>/<split>/<CLASS>/...`) and check the layout.

Every layout problem is a `DataLayoutError` with one line that names what was expected,
raised before any decoding or training starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from pneumonia import CLASSES
from pneumonia.errors import UserError

# macOS and Windows leave these behind in zip archives; they are never images.
_IGNORED_DIRS = {"__MACOSX"}


class DataLayoutError(UserError):
    """The data folder does not look like `<root>/{train,val,test}/{NORMAL,PNEUMONIA}`."""


@dataclass(frozen=True)
class SplitFiles:
    """The image files of one split, sorted, with their class indices."""

    split_dir: Path
    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in _IGNORED_DIRS


def scan_split(root: str | Path, split: str, *, required: bool = True) -> SplitFiles | None:
    """Image files of `root/split`; None if the split is absent and not `required`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataLayoutError(
            f"data.root '{root}' does not exist: expected a folder with train/ val/ test/ "
            f"subfolders, each holding {'/ and '.join(CLASSES)}/ (see README, 'Data')"
        )
    split_dir = root / split
    if not split_dir.is_dir():
        if not required:
            return None
        raise DataLayoutError(f"missing split folder '{split_dir}' (expected {split}/ under data.root)")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and _visible(d.name))
    if sorted(found) != sorted(CLASSES):
        missing = [c for c in CLASSES if c not in found]
        extra = [c for c in found if c not in CLASSES]
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(extra)}")
        raise DataLayoutError(
            f"class folders in '{split_dir}' must be exactly {', '.join(CLASSES)}: {'; '.join(parts)}"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(CLASSES):
        class_paths = []
        for dirpath, dirnames, filenames in os.walk(split_dir / cls, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            class_paths.extend(
                os.path.join(dirpath, f) for f in filenames
                if _visible(f) and f.lower().endswith(IMG_EXTENSIONS)
            )
        if not class_paths:
            raise DataLayoutError(f"class folder '{split_dir / cls}' has no images")
        class_paths.sort()
        paths.extend(class_paths)
        labels.extend([label] * len(class_paths))
    return SplitFiles(split_dir, tuple(paths), tuple(labels))
