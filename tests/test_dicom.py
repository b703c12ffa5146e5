"""DICOM reading: synthetic files written with pydicom, expected pixels computed here in
numpy (independently of the module), plus two real files from ../shared when present."""

import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from pneumonia.data.dicom import DicomError, is_dicom, read_dicom
from pneumonia.errors import UserError

REAL_DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"

# 12-bit values that do not span 0..4095, so scaling by bit depth instead of by the
# image's own range would give other numbers.
RNG = np.random.default_rng(0)
PIXELS_12BIT = RNG.integers(100, 3001, size=(24, 20), dtype=np.uint16)
PIXELS_12BIT[0, 0], PIXELS_12BIT[0, 1] = 100, 3000


@pytest.fixture
def pydicom():
    return pytest.importorskip("pydicom", reason="pydicom is an optional extra: pneumonia[dicom]")


def write_dicom(path, pixels=PIXELS_12BIT, transfer_syntax=None, pixel_data=None, **attrs):
    """Write a minimal CR image; `pixels` (rows, cols) or (rows, cols, 3); attrs override."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    if pixel_data is not False:
        ds.PixelData = pixel_data if pixel_data is not None else pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def minmax_255(x):
    x = x.astype(np.float64)
    return np.round((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)


def test_monochrome2_12bit_is_scaled_by_its_own_range(pydicom, tmp_path):
    out = read_dicom(write_dicom(tmp_path / "a.dcm"))
    assert out.dtype == np.uint8 and out.shape == PIXELS_12BIT.shape
    v = PIXELS_12BIT.astype(np.float64)
    expected = np.round((v - v.min()) / (v.max() - v.min()) * 255)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0 and out.max() == 255


def test_rescale_then_linear_window(pydicom, tmp_path):
    slope, intercept, c, w = 2, -100, 2000, 3000
    path = write_dicom(
        tmp_path / "w.dcm",
        RescaleSlope=slope,
        RescaleIntercept=intercept,
        WindowCenter=c,
        WindowWidth=w,
    )
    out = read_dicom(path)
    # PS3.3 C.11.2.1.2 (LINEAR), on the rescaled values, output range of 12-bit data
    x = PIXELS_12BIT.astype(np.float64) * slope + intercept
    ymin, ymax = 0 * slope + intercept, 4095 * slope + intercept
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (ymax - ymin) + ymin
    y = np.where(x <= c - 0.5 - (w - 1) / 2, ymin, y)
    y = np.where(x > c - 0.5 + (w - 1) / 2, ymax, y)
    expected = minmax_255(y)
    # the window clips both ends of these pixels, so this is no plain min-max scaling
    assert (x <= c - 0.5 - (w - 1) / 2).sum() > 10 and (x > c - 0.5 + (w - 1) / 2).sum() > 10
    assert np.abs(minmax_255(PIXELS_12BIT).astype(int) - expected).max() > 20
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    assert (out == 0).sum() == (expected == 0).sum()
    assert (out == 255).sum() == (expected == 255).sum()


def test_voi_lut_sequence_after_rescale(pydicom, tmp_path):
    """A VOI LUT (here: reversing 0..4095) wins over no window; an identity rescale
    makes the values float, which must not reach the LUT (pydicom warns on float)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = np.arange(4095, -1, -1, dtype="<u2").tobytes()
    path = write_dicom(tmp_path / "voi.dcm", RescaleSlope=1, RescaleIntercept=0, VOILUTSequence=Sequence([item]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_dicom(path)
    np.testing.assert_array_equal(out, minmax_255(4095 - PIXELS_12BIT.astype(np.float64)))


def test_monochrome1_is_inverted(pydicom, tmp_path):
    mono2 = read_dicom(write_dicom(tmp_path / "m2.dcm"))
    mono1 = read_dicom(write_dicom(tmp_path / "m1.dcm", PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert not np.array_equal(mono1, mono2)


def test_monochrome1_is_inverted_after_the_window(pydicom, tmp_path):
    window = {"WindowCenter": 1500, "WindowWidth": 1000}
    mono2 = read_dicom(write_dicom(tmp_path / "m2.dcm", **window))
    mono1 = read_dicom(write_dicom(tmp_path / "m1.dcm", PhotometricInterpretation="MONOCHROME1", **window))
    np.testing.assert_array_equal(mono1, 255 - mono2)
    # inverting before windowing would clip the other end of the pixel values
    x = PIXELS_12BIT
    assert (mono1 == 255).sum() == (x <= 1500 - 0.5 - 999 / 2).sum()


def test_constant_image_is_zeros(pydicom, tmp_path):
    flat = np.full((8, 8), 700, dtype=np.uint16)
    out = read_dicom(write_dicom(tmp_path / "flat.dcm", flat))
    assert out.dtype == np.uint8 and out.shape == (8, 8) and not out.any()


def test_multiframe_takes_the_first_frame(pydicom, tmp_path):
    frames = np.stack([PIXELS_12BIT, PIXELS_12BIT[::-1]])
    path = write_dicom(tmp_path / "mf.dcm", frames[0], pixel_data=frames.tobytes(), NumberOfFrames=2)
    np.testing.assert_array_equal(read_dicom(path), minmax_255(PIXELS_12BIT))


def test_is_dicom(pydicom, tmp_path):
    ext = write_dicom(tmp_path / "x.dcm")
    bare = tmp_path / "IM000001"
    bare.write_bytes(ext.read_bytes())
    assert bare.read_bytes()[128:132] == b"DICM"
    assert is_dicom(bare) and is_dicom(str(bare)) and is_dicom(ext)
    upper = tmp_path / "SCAN.DICOM"
    upper.write_bytes(b"not read: the name is enough")
    assert is_dicom(upper)

    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("x" * 300)
    (tmp_path / "short").write_bytes(b"0123456789")
    (tmp_path / "empty").write_bytes(b"")
    for name in ("a.png", "a.jpg", "notes.txt", "short", "empty", "missing", "missing.dcm"):
        assert not is_dicom(tmp_path / name), name
    assert not is_dicom(tmp_path)  # a directory


def test_no_pixel_data(pydicom, tmp_path):
    path = write_dicom(tmp_path / "sr.dcm", pixel_data=False)
    with pytest.raises(DicomError, match="has no pixel data") as info:
        read_dicom(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, UserError)


def test_text_file_named_dcm(pydicom, tmp_path):
    path = tmp_path / "x.dcm"
    path.write_text("patient list\nnot an image\n" * 20)
    with pytest.raises(DicomError, match="is not a readable DICOM") as info:
        read_dicom(path)
    message = str(info.value)
    assert message.startswith(f"'{path}' is not a readable DICOM file (") and "\n" not in message


def test_truncated_file(pydicom, tmp_path):
    full = write_dicom(tmp_path / "full.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(full[:200])
    with pytest.raises(DicomError, match=r"^'.*cut\.dcm' ") as info:
        read_dicom(path)
    assert "\n" not in str(info.value)


def test_rgb_becomes_channel_mean(pydicom, tmp_path):
    rgb = RNG.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    rgb[0, 0], rgb[0, 1] = 0, 255  # the mean spans 0..255, so scaling changes nothing
    rgb[1, 1] = (255, 0, 0)  # channels differ: taking one channel would be wrong
    path = write_dicom(
        tmp_path / "rgb.dcm",
        rgb,
        SamplesPerPixel=3,
        PhotometricInterpretation="RGB",
        PlanarConfiguration=0,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
    )
    out = read_dicom(path)
    assert out.shape == (10, 12) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.round(rgb.astype(np.float64).mean(axis=-1)))
    assert out[1, 1] == 85


def _jpeg_baseline(pixels):
    from PIL import Image
    from pydicom.encaps import encapsulate

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return encapsulate([buf.getvalue()])


def test_jpeg_baseline_decodes(pydicom, tmp_path):
    from pydicom.uid import JPEGBaseline8Bit

    pixels = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    path = write_dicom(
        tmp_path / "jpeg.dcm",
        pixels,
        transfer_syntax=JPEGBaseline8Bit,
        pixel_data=_jpeg_baseline(pixels),
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
    )
    out = read_dicom(path)
    assert out.shape == (32, 32) and np.abs(out.astype(int) - pixels).max() <= 8


def test_missing_decoder_is_reported_with_the_fix(pydicom, tmp_path, monkeypatch):
    """Make pydicom's JPEG Baseline decoder look as if no plugin were installed."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGBaseline8Bit

    pixels = np.zeros((16, 16), np.uint8)
    path = write_dicom(
        tmp_path / "jpeg.dcm",
        pixels,
        transfer_syntax=JPEGBaseline8Bit,
        pixel_data=_jpeg_baseline(pixels),
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
    )
    decoder = get_decoder(JPEGBaseline8Bit)
    monkeypatch.setattr(decoder, "_available", {})
    assert not decoder.is_available
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert str(info.value) == (
        f"'{path}' uses the compressed transfer syntax JPEG Baseline (Process 1) "
        "(1.2.840.10008.1.2.4.50) and no installed decoder handles it: "
        "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
    )


def test_missing_decoder_for_real(pydicom, tmp_path):
    """HTJ2K needs pylibjpeg-openjpeg, which pneumonia[dicom] does not install."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import HTJ2KLossless

    if get_decoder(HTJ2KLossless).is_available:
        pytest.skip("an HTJ2K decoder (pylibjpeg-openjpeg) is installed here")
    path = write_dicom(
        tmp_path / "htj2k.dcm",
        np.zeros((16, 16), np.uint16),
        transfer_syntax=HTJ2KLossless,
        pixel_data=encapsulate([b"\xff\x4f\xff\x51" + bytes(60)]),
    )
    name = r"High-Throughput JPEG 2000 Image Compression \(Lossless Only\)"
    fix = r"and no installed decoder handles it: pip install pylibjpeg"
    with pytest.raises(DicomError, match=rf"{name} \(1\.2\.840\.10008\.1\.2\.4\.201\) {fix}"):
        read_dicom(path)


def test_without_pydicom(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    (tmp_path / "x.dcm").write_bytes(b"")
    with pytest.raises(DicomError) as info:
        read_dicom(tmp_path / "x.dcm")
    assert str(info.value) == "reading DICOM files needs pydicom: pip install 'pneumonia[dicom]'"


def _real(name):
    path = REAL_DICOM / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (real DICOM files live in ../shared, not in a clone)")
    return path


def test_real_jpeg_baseline_chest_xray(pydicom):
    path = _real("rsna_chest_cr_jpeg_baseline.dcm")
    out = read_dicom(path)
    assert out.shape == (1024, 1024) and out.dtype == np.uint8
    assert out.std() > 20 and out.min() == 0 and out.max() == 255
    assert is_dicom(path)


def test_real_declared_monochrome1_is_the_inverse(pydicom):
    mono1 = read_dicom(_real("rsna_chest_cr_declared_monochrome1.dcm"))
    mono2 = read_dicom(_real("rsna_chest_cr_jpeg_baseline.dcm"))
    np.testing.assert_array_equal(mono1, 255 - mono2)
