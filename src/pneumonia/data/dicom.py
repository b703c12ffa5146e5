"""Read DICOM chest X-rays as 8-bit grayscale images.

`read_dicom` turns a DICOM file into a ``uint8`` array of shape (H, W) that the rest of
the pipeline resizes and normalises like any PNG or JPEG. The steps, in this order, are
those of torchxrayvision's ``read_xray_dcm`` and MONAI's DICOM reader:

1. ``pydicom.dcmread``, then the pixel data of the first frame only (a multi-frame file
   is decoded one frame, not all of them).
2. The modality LUT (``apply_modality_lut``: Rescale Slope/Intercept or a Modality LUT
   Sequence), which maps stored values to meaningful ones.
3. The VOI LUT or window (``apply_voi_lut``: a VOI LUT Sequence, else Window
   Center/Width with the VOI LUT Function), when the file has one; skipped otherwise.
   The window is what the acquiring site chose to show; it must come after step 2
   because it is expressed in rescaled units.
4. Scaling to 0..255 by the image's own min..max (as float, then rounded): this maps
   8-, 12- and 16-bit data to 8 bits by range, the way the project's decoder maps
   16-bit PNGs. A constant image becomes all zeros.
5. Inversion (255 - x) for MONOCHROME1, where a high value means dark; after the
   window, because the window is defined on the stored polarity.

Colour images (Samples per Pixel 3: RGB or YBR_*, which pydicom 3 returns as RGB;
also PALETTE COLOR, expanded through its palette) are not rejected: a chest X-ray saved
in colour is still gray, so it becomes the mean of its three channels, and steps 2-3
(defined for grayscale data only) are skipped.

pydicom is imported lazily, so importing this module never needs it. Every failure is
a one-line `DicomError` that names the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pneumonia.errors import UserError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DICOM_SUFFIXES", "DicomError", "dicom_size", "is_dicom", "read_dicom", "read_header"]

DICOM_SUFFIXES = (".dcm", ".dicom")
_PREAMBLE_SIZE = 128
_MAGIC = b"DICM"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_INSTALL_PYDICOM = "reading DICOM files needs pydicom: pip install 'pneumonia[dicom]'"
_INSTALL_DECODERS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
# elements larger than this are read from the file only when used: the pixel data of a
# refused file is never loaded
_DEFER_SIZE = "1 MB"
# compressed pixel data whose decoded size follows Rows/Columns (no size in the stream)
_SIZED_BY_HEADER = ("1.2.840.10008.1.2.5",)  # RLE Lossless


class DicomError(UserError):
    """A DICOM file that cannot be read as an image (or pydicom is missing)."""


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a regular file named ``*.dcm``/``*.dicom`` (any case) or whose bytes
    128..132 are ``b"DICM"`` (extensionless PACS exports). Reads at most 132 bytes and
    returns False instead of raising for missing, unreadable or short files."""
    try:
        path = Path(path)
        if not path.is_file():
            return False
        if path.suffix.lower() in DICOM_SUFFIXES:
            return True
        with path.open("rb") as f:
            head = f.read(_PREAMBLE_SIZE + len(_MAGIC))
    except (OSError, ValueError):  # ValueError: e.g. a NUL byte in the path
        return False
    return head[_PREAMBLE_SIZE:] == _MAGIC


def read_dicom(path: str | os.PathLike, max_pixels: int | None = None, setting: str = "max_pixels") -> np.ndarray:
    """Return the first frame of the DICOM file `path` as a ``uint8`` (H, W) grayscale
    image: modality LUT, then VOI LUT/window if any, then min..max scaling to 0..255,
    then inversion for MONOCHROME1 (see the module docstring). Colour images become the
    mean of their channels. With `max_pixels`, Rows x Columns x NumberOfFrames (and the
    first compressed frame's own size) are checked before the pixel data is read
    (`pneumonia.data.pixels.TooManyPixels`, named after `setting`). Raises `DicomError`
    with a one-line message."""
    import numpy as np

    _import_pydicom()
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    ds = read_header(path)
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise DicomError(f"'{path}' has no pixel data (a DICOM without an image, e.g. a structured report)")
    _check_decoder(ds, path)
    width, height, frames = dicom_size(ds, path)
    if max_pixels is not None:
        from pneumonia.data.pixels import check_pixels

        check_pixels(width, height, max_pixels, setting, frames)

    from pydicom.pixels import pixel_array

    try:
        # index=0 decodes only the first frame; shape (rows, cols) or (rows, cols, samples)
        arr = pixel_array(ds, index=0)
    except Exception as err:  # pydicom raises RuntimeError, ValueError, AttributeError...
        raise DicomError(f"'{path}' has pixel data that cannot be decoded ({_one_line(err)})") from None

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        if arr.ndim == 3:  # colour: (rows, cols, 3); a chest X-ray in colour is still gray
            image = arr.astype(np.float64).mean(axis=-1)
        else:
            image = apply_modality_lut(arr, ds)
            if ds.get("VOILUTSequence") and np.issubdtype(image.dtype, np.floating):
                # a rescale made the values float, but a VOI LUT is indexed by integer
                # values (pydicom warns on float input): go back to int when whole
                rounded = np.rint(image)
                if np.array_equal(rounded, image):
                    image = rounded.astype(np.int64)
            image = apply_voi_lut(image, ds)
    except Exception as err:  # a malformed LUT, a window width < 1, ...
        raise DicomError(f"'{path}' has an invalid LUT or window ({_one_line(err)})") from None

    image = _scale_to_uint8(np.asarray(image, dtype=np.float64))
    if photometric == "MONOCHROME1":
        image = 255 - image
    return image


def _import_pydicom():
    try:
        import pydicom
    except ImportError:
        raise DicomError(_INSTALL_PYDICOM) from None
    return pydicom


def read_header(path: str | os.PathLike):
    """The dataset of `path`, its large elements (the pixel data) left on disk until used."""
    pydicom = _import_pydicom()
    try:
        return pydicom.dcmread(path, defer_size=_DEFER_SIZE)
    except Exception as err:  # InvalidDicomError, OSError, or a truncated file's EOFError...
        raise DicomError(f"'{path}' is not a readable DICOM file ({_first_line(err)})") from None


def dicom_size(ds, path) -> tuple[int, int, int]:
    """(Columns, Rows, NumberOfFrames) of a dataset read by `read_header`. For compressed
    pixel data (JPEG, JPEG-LS, JPEG 2000) the first frame's codestream header must give
    the same size: a `DicomError` otherwise, read without decoding."""
    try:
        width, height = int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        raise DicomError(f"'{path}' has invalid Rows, Columns or NumberOfFrames") from None
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is None or not syntax.is_encapsulated or syntax in _SIZED_BY_HEADER or "PixelData" not in ds:
        return width, height, frames
    from pydicom.encaps import get_frame

    from pneumonia.data.pixels import codestream_size

    try:
        first = get_frame(ds.PixelData, 0, number_of_frames=frames)
    except Exception as err:  # malformed items or offsets
        raise DicomError(f"'{path}' has compressed pixel data that cannot be parsed ({_first_line(err)})") from None
    real = codestream_size(first)
    if real is None:
        raise DicomError(
            f"'{path}': the size of its compressed frame ({syntax.name}) cannot be read from its header: not decoded"
        )
    if real != (width, height):
        raise DicomError(
            f"'{path}': its compressed frame is {real[0]}x{real[1]} but Rows/Columns say {width}x{height}: not decoded"
        )
    return width, height, frames


def _check_decoder(ds, path) -> None:
    """Fail early, with the fix, when the transfer syntax's decoder is missing."""
    from pydicom.pixels import get_decoder

    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is None:
        return  # pixel_array reports it as undecodable
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomError(
            f"'{path}' uses the transfer syntax {syntax.name} ({syntax}), whose pixel data "
            "pydicom cannot decode (e.g. video)"
        ) from None
    if not decoder.is_available:
        raise DicomError(
            f"'{path}' uses the compressed transfer syntax {syntax.name} ({syntax}) and no "
            f"installed decoder handles it: {_INSTALL_DECODERS}"
        )


def _scale_to_uint8(image: np.ndarray) -> np.ndarray:
    """Min..max of the image to 0..255, rounded; a constant image becomes zeros."""
    import numpy as np

    low, high = float(np.min(image)), float(np.max(image))
    if not high > low:  # constant (or NaN): nothing to show, and no division by zero
        return np.zeros(image.shape, dtype=np.uint8)
    scaled = image - low  # then in place: one float64 copy of the image, not four
    scaled /= high - low
    scaled *= 255.0
    return np.clip(np.rint(scaled, out=scaled), 0, 255, out=scaled).astype(np.uint8)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines).replace(":;", ":") if lines else type(err).__name__
