"""Find the images of one split (`<root>/<split>/<CLASS>/...`) and check the layout.

Every layout problem is a `DataLayoutError` with one line that names what was expected,
raised before any decoding or training starts.

`ImageWalk` is the one folder walker of every entry point (train, eval, predict with
either backend): symbolic links are followed, but each real folder is entered once (a
link back to a parent is not a loop), each real file is listed once under its first
name, and named pipes, sockets and devices with image names are never opened: they are
listed as skipped, with the reason, beside the files that fail to decode.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

from pneumonia import CLASSES
from pneumonia.data.dicom import is_dicom
from pneumonia.data.pixels import not_regular
from pneumonia.errors import UserError

log = logging.getLogger(__name__)

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
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason): special files the walk did not open

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


def _named_like_image(name: str) -> bool:
    suffix = Path(name).suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in DICOM_EXTENSIONS


@dataclass
class ImageWalk:
    """Image files found by one or more `walk`/`add` calls, each real file once.

    Folders are identified by (st_dev, st_ino) of their real path: a symbolic link to a
    folder already entered (`sub/up -> ..`) is not followed again, so a walk always ends.
    `skipped` lists (path, reason) for special files named like images; `duplicates`
    and `links_not_followed` list (path, first path) for what was left out as seen."""

    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    links_not_followed: list[tuple[str, str]] = field(default_factory=list)
    _dirs: dict[tuple[int, int], str] = field(default_factory=dict, repr=False)  # walked
    _reserved: dict[tuple[int, int], str] = field(default_factory=dict, repr=False)  # never entered by a link
    _seen: dict[tuple[int, int], str] = field(default_factory=dict, repr=False)

    def add(self, path: str, *, named: bool = False) -> None:
        """One file: kept when it is a regular file (an image by name or a DICOM by its
        preamble, any name when `named`, i.e. given explicitly) not seen before."""
        name = os.path.basename(path)
        try:
            st = os.stat(path)  # follows links; never opens the file
        except OSError as err:
            if named or (visible(name) and _named_like_image(name)):
                what = "a broken link" if os.path.islink(path) else "cannot be read"
                self.skipped.append((path, f"{what} ({err.strerror})"))
            return
        special = not_regular(st.st_mode)
        if special is not None:
            if named or (visible(name) and _named_like_image(name)):
                self.skipped.append((path, f"{special}, not a regular file: not read"))
            return
        if not named and not is_image_file(path):
            return
        key = (st.st_dev, st.st_ino)
        if key in self._seen:
            if self._seen[key] != path:  # the same path twice is no news
                self.duplicates.append((path, self._seen[key]))
            return
        self._seen[key] = path
        self.files.append(path)

    def walk(self, folder: str | Path) -> list[str]:
        """Image files under `folder`, recursively, sorted (hidden files and debris left
        out); returns the files this walk added."""
        folder = str(folder)
        start = len(self.files)
        try:
            st = os.stat(folder)
        except OSError:
            return []
        key = (st.st_dev, st.st_ino)
        if key in self._dirs:
            self.links_not_followed.append((folder, self._dirs[key]))
            return []
        self._dirs[key] = folder
        # the folders above it too: a link to one of them (`sub/up -> ../..`) leads back here
        for parent in Path(os.path.realpath(folder)).parents:
            self.reserve(parent)
        found: list[str] = []

        def unreadable(err: OSError) -> None:
            self.skipped.append((str(err.filename), f"folder cannot be read ({err.strerror})"))

        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=unreadable):
            keep = []
            for d in sorted(dirnames):
                if not visible(d):
                    continue
                full = os.path.join(dirpath, d)
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                first = self._dirs.get(key) or self._reserved.get(key)
                if first is not None:  # a second way into a folder already walked (or a loop)
                    self.links_not_followed.append((full, first))
                    continue
                self._dirs[key] = full
                keep.append(d)
            dirnames[:] = keep
            found.extend(os.path.join(dirpath, f) for f in filenames if visible(f))
        for path in sorted(found):
            self.add(path)
        return self.files[start:]

    def reserve(self, folder: str | Path) -> None:
        """Links met during a walk never lead into `folder` (an ancestor of a walked folder,
        or a folder walked by its own name); `walk(folder)` itself still walks it."""
        try:
            st = os.stat(folder)
        except OSError:
            return
        self._reserved.setdefault((st.st_dev, st.st_ino), str(folder))

    def _count(self) -> int:
        return len(self.files) + len(self.skipped) + len(self.duplicates) + len(self.links_not_followed)

    def log_left_out(self) -> None:
        """One log line each for folder links not followed and files found twice."""
        if self.links_not_followed:
            path, first = self.links_not_followed[0]
            log.warning(
                "Not entering %d folder(s) a second time (links back into a folder already walked, or "
                "above it; each folder is read once), e.g. '%s' -> '%s'",
                len(self.links_not_followed),
                path,
                first,
            )
        if self.duplicates:
            path, first = self.duplicates[0]
            log.warning(
                "Left out %d second name(s) of files already listed (each file is read once), "
                "e.g. '%s' (same file as '%s')",
                len(self.duplicates),
                path,
                first,
            )


def walk_images(folder: str | Path) -> list[str]:
    """Image files under `folder`, recursively, sorted, hidden files and debris left out;
    cycle-safe, each real file once, special files left out (see `ImageWalk`)."""
    walk = ImageWalk()
    walk.walk(folder)
    walk.log_left_out()
    return walk.files


@overload
def scan_split(root: str | Path, split: str, *, required: Literal[True] = ...) -> SplitFiles: ...
@overload
def scan_split(root: str | Path, split: str, *, required: bool) -> SplitFiles | None: ...
def scan_split(root: str | Path, split: str, *, required: bool = True) -> SplitFiles | None:
    """Image files of `root/split`; None if the split is absent and not `required`."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataLayoutError(
            f"data.root '{root}' is a file, not a folder: expected a folder with train/ val/ "
            f"test/ subfolders (see docs/data.md)"
        )
    if not root.is_dir():
        raise DataLayoutError(
            f"data.root '{root}' does not exist: expected a folder with train/ val/ test/ "
            f"subfolders, each holding {'/ and '.join(CLASSES)}/ (see docs/data.md)"
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
    walk = ImageWalk()  # one walk for the split: a file linked into both classes counts once
    for cls in CLASSES:  # a link into the other class folder is not followed (its images keep their label)
        walk.reserve(split_dir / cls)
    for label, cls in enumerate(CLASSES):
        class_paths = walk.walk(split_dir / cls)
        if not class_paths:
            raise DataLayoutError(f"class folder '{split_dir / cls}' has no images")
        paths.extend(class_paths)
        labels.extend([label] * len(class_paths))
    walk.log_left_out()
    return SplitFiles(split_dir, tuple(paths), tuple(labels), tuple(walk.skipped))


def label_from_path(path: str | Path) -> int | None:
    """The class index a path's nearest `NORMAL`/`PNEUMONIA` folder says, else None."""
    for part in reversed(Path(path).parent.parts):
        if part in CLASSES:
            return CLASSES.index(part)
    return None


def find_inputs(inputs: str | Path | list | tuple) -> ImageWalk:
    """Files to predict from a file, a folder (walked recursively), a glob, or a list of
    those; in the order given, each real file once (`ImageWalk`). A folder yields only
    image and DICOM files; a file named explicitly is kept whatever its extension (the
    decoder has the last word). Special files (a FIFO named pipe.png) are in `skipped`."""
    import glob

    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs or [])
    if not items:
        raise DataLayoutError("inputs is empty: give a file, a folder or a glob, e.g. inputs=scans/")
    walk = ImageWalk()
    for item in items:
        item = str(item)
        expanded = Path(item).expanduser()
        before = walk._count()
        if expanded.is_dir():
            walk.walk(expanded)
            if walk._count() == before:
                raise DataLayoutError(f"inputs: folder '{expanded}' holds no image or DICOM files")
        elif os.path.lexists(expanded):  # a file (or a broken link, listed as skipped)
            walk.add(str(expanded), named=True)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(str(expanded), recursive=True))
            for m in matches:
                if Path(m).is_dir():
                    walk.walk(m)
                else:
                    walk.add(m)
            if walk._count() == before:
                raise DataLayoutError(f"inputs: '{item}' matches no image or DICOM file")
        else:
            raise DataLayoutError(f"inputs: '{item}' does not exist")
    walk.log_left_out()
    return walk


def expand_inputs(inputs: str | Path | list | tuple) -> list[str]:
    """The files of `find_inputs` (special files left out)."""
    return find_inputs(inputs).files
