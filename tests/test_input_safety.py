"""Hostile input folders and files: symlink loops, named pipes, images over the pixel limit
(PNG, RLE DICOM, a DICOM whose JPEG is larger than its header says), and a damaged decoded
cache. Cases that would hang on a regression run in a subprocess with a timeout."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia.data.cache import decode_images
from pneumonia.data.decode import load_image
from pneumonia.data.folder import find_inputs, scan_split
from pneumonia.data.pixels import TooManyPixels, header_size
from pneumonia.data.preprocess import Preprocess
from pneumonia.errors import ConfigError, UserError
from tests.helpers import PROJECT_ROOT

SRC = str(PROJECT_ROOT / "src")


def run_python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter on this checkout: a hang fails the test after `timeout`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(PROJECT_ROOT)]), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, cwd=PROJECT_ROOT
    )


# ---- files made here, tiny on disk ------------------------------------------------------
def huge_png(path: Path, width: int = 13000, height: int = 13000) -> Path:
    """A valid 8-bit gray PNG of zeros (169 MP by default) in about 0.7 MB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp, row = zlib.compressobj(1), bytes(width + 1)
    data = b"".join(
        [*(comp.compress(row * 100) for _ in range(height // 100)), comp.compress(row * (height % 100)), comp.flush()]
    )
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )
    return path


def _dataset(rows: int, columns: int, syntax):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    return ds


def rle_dicom(path: Path, size: int = 16000) -> Path:
    """A valid RLE Lossless DICOM of size x size zeros (4 MB at 16000): PackBits runs of 128."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    ds = _dataset(size, size, RLELossless)
    row = b"\x81\x00" * (size // 128) + (bytes([size % 128 - 1, 0]) if size % 128 else b"")
    ds.PixelData = encapsulate([struct.pack("<16L", 1, 64, *([0] * 14)) + row * size])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_dicom(path: Path, header: int = 64, real: int = 12000) -> Path:
    """A JPEG Baseline DICOM whose Rows/Columns say header x header and whose JPEG's frame
    header says real x real (a small JPEG with its SOF size patched: tiny on disk)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    buf = io.BytesIO()
    Image.fromarray(np.full((header, header), 128, np.uint8)).save(buf, "JPEG")
    jpeg = bytearray(buf.getvalue())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", real, real)
    ds = _dataset(header, header, JPEGBaseline8Bit)
    ds.PixelData = encapsulate([bytes(jpeg)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def loop_folder(root: Path) -> Path:
    """Two images, a second name of one of them, and two links back to the folder."""
    root.mkdir(parents=True)
    for name, value in (("a.png", 40), ("b.png", 200)):
        Image.fromarray(np.full((40, 40), value, np.uint8)).save(root / name)
    (root / "sub").mkdir()
    os.symlink("..", root / "sub" / "up")
    os.symlink("..", root / "sub" / "up2")
    os.symlink("../a.png", root / "sub" / "alias.png")
    return root


# ---- one cycle-safe walker ---------------------------------------------------------------
def test_symlink_loops_end_and_each_image_counts_once(tmp_path):
    folder = loop_folder(tmp_path / "scans")
    code = (
        "import json; from pneumonia.data.folder import walk_images, find_inputs; "
        f"w = find_inputs([{str(folder)!r}, {str(folder / 'a.png')!r}]); "
        f"print(json.dumps([walk_images({str(folder)!r}), w.files, w.duplicates, w.links_not_followed]))"
    )
    res = run_python(code, timeout=60)  # a walker that loops is killed here, and fails
    assert res.returncode == 0, res.stderr
    # a folder given after one of its subfolders is still walked (the subfolder once)
    (folder / "more").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "more" / "c.png")
    assert find_inputs([folder / "more", folder]).files == [
        str(folder / "more" / "c.png"),
        str(folder / "a.png"),
        str(folder / "b.png"),
    ]
    walked, inputs, duplicates, links = json.loads(res.stdout)
    assert walked == inputs == [str(folder / "a.png"), str(folder / "b.png")]
    assert duplicates == [[str(folder / "sub" / "alias.png"), str(folder / "a.png")]]
    assert sorted(link for link, _ in links) == [str(folder / "sub" / "up"), str(folder / "sub" / "up2")]
    assert "each file is read once" in res.stderr and "e.g. '" in res.stderr  # the log names what was left out


def test_fifo_named_like_an_image_is_listed_never_opened(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "a.png")
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(folder / "pipe")  # no image name: not listed at all
    code = (
        "import json; from pneumonia.data.folder import find_inputs; "
        "from pneumonia.data.decode import load_image\n"
        f"w = find_inputs({str(folder)!r}); e = find_inputs({str(folder / 'pipe.png')!r})\n"
        f"try:\n    load_image({str(folder / 'pipe.png')!r}, 32, 1)\n"
        "except Exception as err:\n    why = str(err)\n"
        "print(json.dumps([w.files, w.skipped, e.files, e.skipped, why]))"
    )
    res = run_python(code, timeout=60)  # opening the FIFO would block: killed, and fails
    assert res.returncode == 0, res.stderr
    files, skipped, explicit_files, explicit_skipped, why = json.loads(res.stdout)
    assert files == [str(folder / "a.png")] and explicit_files == []
    assert (
        skipped == explicit_skipped == [[str(folder / "pipe.png"), "a named pipe (FIFO), not a regular file: not read"]]
    )
    assert why == "a named pipe (FIFO), not a regular file: not read"


@pytest.mark.slow
def test_split_scan_lists_special_files_for_bad_images_tsv(xray_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(xray_root / "test", root / "test")
    os.mkfifo(root / "test" / "NORMAL" / "pipe.jpeg")
    os.symlink("..", root / "test" / "NORMAL" / "loop")
    code = (
        "from pneumonia.data.datamodule import ChestXrayDataModule\n"
        f"dm = ChestXrayDataModule(root={str(root)!r}, image_size=32, cache_dir=None, "
        f"bad_image_report={str(tmp_path / 'bad_images.tsv')!r})\n"
        "dm.setup('test'); print(len(dm.splits['test']))"
    )
    res = run_python(code, timeout=120)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) == len(scan_split(xray_root, "test"))  # every image once, the FIFO not among them
    assert (tmp_path / "bad_images.tsv").read_text() == (
        f"{root / 'test' / 'NORMAL' / 'pipe.jpeg'}\ta named pipe (FIFO), not a regular file: not read\n"
    )


# ---- one pixel limit, from the header ----------------------------------------------------
@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("big")
    return {
        "png": huge_png(folder / "huge.png"),
        "rle": rle_dicom(folder / "huge_rle.dcm"),
        "jpeg": jpeg_dicom(folder / "small_header_big_jpeg.dcm"),
    }


def test_header_sizes_are_read_without_decoding(big_files):
    assert header_size(big_files["png"]) == (13000, 13000, 1)
    assert header_size(big_files["rle"]) == (16000, 16000, 1)
    with pytest.raises(UserError, match=r"compressed frame is 12000x12000 but Rows/Columns say 64x64: not decoded"):
        header_size(big_files["jpeg"])


def test_pillow_warning_is_silenced_at_the_open_only_and_thread_safely(big_files):
    """13000x13000 is between Pillow's warning (89 MP) and its refusal (179 MP): the header is
    read without a DecompressionBombWarning, and no filter is left behind (none is set at
    import time either), also with many opens at once from threads (the decoders' pools)."""
    ours = [f for f in warnings.filters if f[2] is Image.DecompressionBombWarning]
    assert ours == []  # importing pneumonia.data.pixels set no filter
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning from the open would raise
        before = list(warnings.filters)
        assert header_size(big_files["png"]) == (13000, 13000, 1)
        with ThreadPoolExecutor(max_workers=8) as pool:
            sizes = list(pool.map(header_size, [big_files["png"]] * 64))
        assert sizes == [(13000, 13000, 1)] * 64
        assert warnings.filters == before


def test_every_decoder_refuses_files_over_the_limit_before_decoding(big_files, monkeypatch):
    from pneumonia.data import dicom

    def no_decoding(*args, **kwargs):
        raise AssertionError("the pixel data was decoded")

    from PIL import ImageFile

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr("pydicom.pixels.pixel_array", no_decoding)
    with pytest.raises(TooManyPixels, match=r"^13000x13000 = 169\.0 MP is over data\.max_pixels=50000000: not"):
        Preprocess(32, 1).load(big_files["png"])
    with pytest.raises(TooManyPixels, match=r"^16000x16000 = 256\.0 MP is over max_pixels=50000000: not decoded"):
        load_image(big_files["rle"], 32, 1)
    with pytest.raises(dicom.DicomError, match=r"12000x12000 but Rows/Columns say 64x64"):
        load_image(big_files["jpeg"], 32, 1, max_pixels=10**12)
    # the ONNX backend's loader is the same function, under predict's max_pixels
    from pneumonia.export.onnx_predictor import OnnxPredictor

    onnx_like = SimpleNamespace(image_size=32, channels=1, max_pixels=1000)
    with pytest.raises(TooManyPixels, match=r"over max_pixels=1000"):
        OnnxPredictor.load(onnx_like, big_files["png"])


def test_pillow_bombs_and_limits_are_one_line(tmp_path):
    bomb = huge_png(tmp_path / "bomb.png", 20000, 10000)  # over twice Pillow's own limit: refused at open
    with pytest.raises(TooManyPixels, match=r"^too many pixels to decode safely \(Pillow: Image size \(200000000"):
        load_image(bomb, 32, 1, max_pixels=10**12)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(small)
    assert load_image(small, 8, 1, max_pixels=1200).shape == (1, 8, 8)  # at the limit: read
    with pytest.raises(TooManyPixels, match=r"^40x30 = 0\.0 MP is over max_pixels=1199"):
        load_image(small, 8, 1, max_pixels=1199)
    for bad in (0, -1, True, 1.5, "50MP", None):
        with pytest.raises(ConfigError, match=r"^max_pixels=.* must be an integer >= 1"):
            Preprocess(32, 1, max_pixels=bad)


def test_training_and_eval_list_large_files_in_bad_images_tsv(xray_root, tmp_path):
    from pneumonia.data.datamodule import ChestXrayDataModule

    root = tmp_path / "root"
    shutil.copytree(xray_root / "test", root / "test")
    huge_png(root / "test" / "PNEUMONIA" / "huge.png", 8000, 8000)
    report = tmp_path / "bad_images.tsv"
    dm = ChestXrayDataModule(
        root=str(root),
        image_size=32,
        cache_dir=str(tmp_path / "cache"),
        bad_image_report=str(report),
        max_pixels=60_000_000,
    )
    dm.setup("test")
    assert (
        report.read_text() == f"{root / 'test' / 'PNEUMONIA' / 'huge.png'}\t8000x8000 = 64.0 MP is over "
        f"data.max_pixels=60000000: not decoded\n"
    )
    assert len(dm.splits["test"]) == len(scan_split(xray_root, "test"))
    with pytest.raises(ConfigError, match=r"^max_pixels=0 must be"):
        ChestXrayDataModule(root=str(root), max_pixels=0)


def test_app_refuses_a_dicom_whose_jpeg_is_larger_than_its_header(tiny_checkpoint, big_files):
    from pneumonia.app.service import Service

    service = Service.from_checkpoint(tiny_checkpoint, device="cpu")
    result = service.score([big_files["jpeg"], big_files["rle"]], names=["a.dcm", "b.dcm"])
    assert "compressed frame is 12000x12000 but Rows/Columns say 64x64" in result[0].error
    assert result[1].error.startswith("image of 256 megapixels: larger than the limit")


@pytest.mark.slow
def test_predict_skips_loops_pipes_and_huge_files_in_bounded_memory(tiny_checkpoint, big_files, tmp_path):
    folder = loop_folder(tmp_path / "scans")
    os.mkfifo(folder / "pipe.png")
    for path in big_files.values():
        os.symlink(path, folder / path.name)
    out = tmp_path / "out"
    # predict.py as a user runs it; its own peak RSS printed at the end
    code = (
        "import resource, runpy, sys\n"
        f"sys.argv = ['predict.py', 'ckpt_path={tiny_checkpoint}', 'inputs={folder}', 'device=cpu', "
        f"'hydra.run.dir={out}', 'decode_threads=2']\n"
        "try:\n    runpy.run_path('predict.py', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (pytest, often > 1.5 GB) across exec
        "print('maxrss_kb', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    res = run_python(code, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == [str(folder / "a.png"), str(folder / "b.png")]
    bad = dict(line.split("\t") for line in (out / "bad_images.tsv").read_text().splitlines())
    assert bad == {
        str(folder / "pipe.png"): "a named pipe (FIFO), not a regular file: not read",
        str(folder / "huge.png"): "13000x13000 = 169.0 MP is over max_pixels=50000000: not decoded",
        str(folder / "huge_rle.dcm"): "16000x16000 = 256.0 MP is over max_pixels=50000000: not decoded",
        str(
            folder / "small_header_big_jpeg.dcm"
        ): f"'{folder / 'small_header_big_jpeg.dcm'}': its compressed frame is 12000x12000 but Rows/Columns say "
        f"64x64: not decoded",
    }
    peak_kb = int(res.stdout.split("maxrss_kb")[-1])
    assert peak_kb < 1_500_000, f"peak RSS {peak_kb} kB"  # decoding the RLE file alone takes > 2 GB


# ---- the decoded cache's checksum ------------------------------------------------------------
def test_flipped_bytes_in_the_cache_are_noticed_and_rebuilt(xray_root, tmp_path, monkeypatch, caplog):
    import pneumonia.data.cache as cache

    monkeypatch.setattr(cache, "CHUNK", 10)
    files = scan_split(xray_root, "train")
    prep = Preprocess(32, 1)
    first = decode_images(files.paths, files.labels, prep, cache_dir=tmp_path, threads=1)
    fresh = decode_images(files.paths, files.labels, prep)
    assert torch.equal(first.images, fresh.images)
    del first
    data_file = next(tmp_path.glob("images-*/images.u8"))
    row_bytes = 32 * 32
    with open(data_file, "r+b") as f:  # 100 bytes flipped inside row 25 (chunk 2 of 10)
        f.seek(25 * row_bytes + 300)
        block = f.read(100)
        f.seek(25 * row_bytes + 300)
        f.write(bytes(b ^ 0xFF for b in block))
    calls = []
    original = Preprocess.load
    monkeypatch.setattr(Preprocess, "load", lambda self, path: (calls.append(path), original(self, path))[1])
    with caplog.at_level(logging.WARNING, logger="pneumonia.data.cache"):
        again = decode_images(files.paths, files.labels, prep, cache_dir=tmp_path, threads=1)
    assert [r.message for r in caplog.records if "checksum" in r.message] == [
        f"Image cache {data_file.parent} failed its checksum (1 of 10 chunk(s) changed on disk): rebuilding them"
    ]
    assert calls == list(files.paths[20:30])  # only the changed chunk is decoded again
    assert torch.equal(again.images, fresh.images) and torch.equal(again.ok, fresh.ok)
    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pneumonia.data.cache"):
        decode_images(files.paths, files.labels, prep, cache_dir=tmp_path, threads=1)
    assert calls == [] and not caplog.records  # sound again: served as it is
