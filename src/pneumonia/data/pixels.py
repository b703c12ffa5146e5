"""The pixel limit (`data.max_pixels`), checked from a file's header before any decoding.

Every decoder goes through here: PIL images are opened lazily (`Image.open` reads the
header only) and their size checked before `load()`; DICOM files are checked on
Rows x Columns x NumberOfFrames before the pixel data is touched, and for compressed
(encapsulated) pixel data the size written in the first frame's own codestream header
(JPEG, JPEG-LS, JPEG 2000) must match Rows/Columns, so a file whose header says 64x64
but whose JPEG is 12000x12000 is refused without decoding either.

Special files (named pipes, sockets, devices) are refused before they are opened: a FIFO
named `pipe.png` would block the reader forever.

PIL and the standard library only (pydicom lazily, through `pneumonia.data.dicom`).
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from pathlib import Path

from PIL import Image

from pneumonia.errors import ConfigError, UserError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "TooManyPixels",
    "check_max_pixels",
    "check_pixels",
    "header_size",
    "not_regular",
    "open_image",
    "require_regular_file",
]

# 50 MP: a 7071 x 7071 image; chest X-rays are at most about 4300 x 4300 (18 MP)
DEFAULT_MAX_PIXELS = 50_000_000

# Pillow warns at open above its own limit (`Image.MAX_IMAGE_PIXELS`, 89 MP); every open here
# is followed by the max_pixels check, which refuses such an image before it is decoded (or was
# raised on purpose above it), so the warning is noise. It is silenced around the open only
# (`open_image`), not by a filter set at import time. `warnings.catch_warnings` swaps the
# process-wide filter list (not thread-safe before Python 3.14), and files are opened from
# several threads at once (`data.cache` and `runners.predict` decode in a ThreadPoolExecutor,
# `data.describe` reads headers in one): this lock keeps two opens from interleaving their
# save/restore, which would leave the filter on for good or restore it early. The open reads
# the header only, so holding the lock costs little. Setting `Image.MAX_IMAGE_PIXELS` instead
# would be global state too, shared by callers with different limits, and would lose Pillow's
# own refusal above twice its limit, which stays (a one-line `TooManyPixels`).
_OPEN_LOCK = threading.Lock()

_SPECIAL = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class TooManyPixels(UserError):
    """An image larger than the pixel limit (refused before decoding)."""


def check_max_pixels(value: object, key: str = "data.max_pixels") -> int:
    """`value` as the pixel limit, or a `ConfigError` naming `key`. There is always a limit."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{key}={value!r} must be an integer >= 1 (pixels per image, read from the header "
            f"before decoding; default {DEFAULT_MAX_PIXELS}); give a larger number to allow "
            f"larger images"
        )
    return value


def check_pixels(width: int, height: int, max_pixels: int, setting: str = "max_pixels", frames: int = 1) -> None:
    """Raise `TooManyPixels` when width x height (x frames) is over `max_pixels`."""
    pixels = int(width) * int(height) * max(int(frames), 1)
    if pixels > max_pixels:
        shape = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
        raise TooManyPixels(f"{shape} = {pixels / 1e6:.1f} MP is over {setting}={max_pixels}: not decoded")


def not_regular(mode: int) -> str | None:
    """What a file of this `st_mode` is when it is not a regular file or a folder, else None."""
    for test, what in _SPECIAL:
        if test(mode):
            return what
    return None


def require_regular_file(path: str | os.PathLike) -> None:
    """Raise `UserError` for a named pipe, socket or device (checked without opening it);
    a missing file raises the usual `FileNotFoundError`."""
    what = not_regular(os.stat(path).st_mode)
    if what is not None:
        raise UserError(f"{what}, not a regular file: not read")


def open_image(path: str | os.PathLike | io.BytesIO) -> Image.Image:
    """`Image.open` (lazy: the header only), with Pillow's decompression-bomb refusal turned
    into a one-line `TooManyPixels`. Pillow raises it at open for images over twice its
    `Image.MAX_IMAGE_PIXELS` (179 MP by default), and only warns between once and twice:
    callers check the size against their own limit before `load()`, so the warning is not
    shown (silenced here only, thread-safely: see `_OPEN_LOCK`)."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as err:
        raise TooManyPixels(f"too many pixels to decode safely (Pillow: {str(err).split(',')[0]})") from None


def header_size(path: str | Path) -> tuple[int, int, int]:
    """(width, height, frames) of an image or DICOM file from its header, without decoding
    the pixels. DICOM: Columns, Rows, NumberOfFrames, after checking the first compressed
    frame's own size. Raises `UserError` (or the reader's error) when the header cannot be
    read or does not hold together."""
    from pneumonia.data.dicom import dicom_size, is_dicom, read_header

    require_regular_file(path)
    if is_dicom(path):
        return dicom_size(read_header(path), path)
    with open_image(path) as img:
        width, height = img.size
    return width, height, 1


def codestream_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) written in the header of a JPEG, JPEG-LS or JPEG 2000 codestream
    (a DICOM frame), without decoding it; None when the bytes are none of these."""
    if data[:2] == b"\xff\xd8":  # JPEG and JPEG-LS: the SOF segment (Pillow only parses 8-bit JPEG)
        try:
            from pydicom.pixels.utils import _get_jpg_parameters
        except ImportError:  # a pydicom without it: Pillow below (8-bit JPEG only)
            pass
        else:
            info = _get_jpg_parameters(data)
            if "width" in info and "height" in info:
                return int(info["width"]), int(info["height"])
    try:
        with open_image(io.BytesIO(data)) as img:  # JPEG 2000 (SIZ marker) and 8-bit JPEG
            return img.size
    except TooManyPixels:
        raise
    except Exception:  # not a codestream Pillow knows
        return None
