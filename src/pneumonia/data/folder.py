"""Find the images of one split (`<root>/<split>/<CLASS>/...`) and check the layout.

Every layout problem is a `DataLayoutError` with one line that names what was expected,
raised before any decoding or training starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pneumonia import CLASSES
from pneumonia.data.dicom import is_dicom
from pneumonia.errors import UserError

# what the decoder reads: PIL's common formats, and DICOM (pydicom)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
DICOM_EXTENSIONS = (".dcm", ".dicom")
# macOS and Windows leave these behind in zip archives and folders; they are never images.
_IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}


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


def visible(name: str) -> bool:
    """False for hidden files and folders (`.DS_Store`, `._x.jpeg`) and OS debris."""
    return not name.startswith(".") and name not in _IGNORED_NAMES


def is_image_file(path: str | Path) -> bool:
    """An image or DICOM file by its extension, or an extensionless file that carries the
    DICOM preamble (PACS exports often have no extension)."""
    name = Path(path).name
    if not visible(name):
        return False
    suffix = Path(name).suffix.lower()
    if suffix in IMAGE_EXTENSIONS or suffix in DICOM_EXTENSIONS:
        return True
    return suffix == "" and is_dicom(path)


def walk_images(folder: str | Path) -> list[str]:
    """Image files under `folder`, recursively, sorted, hidden files and debris left out."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if visible(d))
        found.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(os.path.join(dirpath, f)))
    return sorted(found)


def scan_split(root: str | Path, split: str, *, required: bool = True) -> SplitFiles | None:
    """Image files of `root/split`; None if the split is absent and not `required`."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataLayoutError(f"data.root '{root}' is a file, not a folder: expected a folder with train/ val/ "
                              f"test/ subfolders (see README, 'Data')")
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
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and visible(d.name))
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
        class_paths = walk_images(split_dir / cls)
        if not class_paths:
            raise DataLayoutError(f"class folder '{split_dir / cls}' has no images")
        paths.extend(class_paths)
        labels.extend([label] * len(class_paths))
    return SplitFiles(split_dir, tuple(paths), tuple(labels))


def label_from_path(path: str | Path) -> int | None:
    """The class index a path's nearest `NORMAL`/`PNEUMONIA` folder says, else None."""
    for part in reversed(Path(path).parent.parts):
        if part in CLASSES:
            return CLASSES.index(part)
    return None


def expand_inputs(inputs: str | Path | list | tuple) -> list[str]:
    """Files to predict from a file, a folder (walked recursively), a glob, or a list of
    those; in the order given, each file once. A folder yields only image and DICOM files;
    a file named explicitly is kept whatever its extension (the decoder has the last word)."""
    import glob

    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs or [])
    if not items:
        raise DataLayoutError("inputs is empty: give a file, a folder or a glob, e.g. inputs=scans/")
    found: list[str] = []
    for item in items:
        item = str(item)
        expanded = Path(item).expanduser()
        if expanded.is_dir():
            files = walk_images(expanded)
            if not files:
                raise DataLayoutError(f"inputs: folder '{expanded}' holds no image or DICOM files")
        elif expanded.is_file():
            files = [str(expanded)]
        elif glob.has_magic(item):
            matches = sorted(glob.glob(str(expanded), recursive=True))
            files = [m for m in matches if Path(m).is_file() and is_image_file(m)]
            for m in matches:
                if Path(m).is_dir():
                    files.extend(walk_images(m))
            if not files:
                raise DataLayoutError(f"inputs: '{item}' matches no image or DICOM file")
        else:
            raise DataLayoutError(f"inputs: '{item}' does not exist")
        found.extend(files)
    return list(dict.fromkeys(found))
