import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia.data.cache import decode_images
from pneumonia.data.datamodule import ChestXrayDataModule
from pneumonia.data.folder import DataLayoutError, scan_split
from pneumonia.data.preprocess import Preprocess
from pneumonia.data.sampler import EpochBatchSampler
from pneumonia.data.synthetic import make_chest_xray_tree


def make_dm(root, tmp_path, **kw):
    kw = {"image_size": 32, "batch_size": 8, "val_fraction": 0.25, "cache_dir": str(tmp_path / "cache"), **kw}
    return ChestXrayDataModule(root=str(root), **kw)


def test_setup_carves_patient_val_when_val_folder_is_tiny(xray_root, tmp_path):
    dm = make_dm(xray_root, tmp_path)
    dm.setup("fit")
    n_train, n_val = len(dm.splits["train"]), len(dm.splits["val"])
    assert n_train + n_val == 96  # the 8-image val/ folder is ignored, train/ is split
    assert 18 <= n_val <= 32
    x, y, idx = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.uint8
    assert y.dtype == torch.long and set(y.tolist()) <= {0, 1}


def test_large_enough_val_folder_is_used_as_is(xray_root, tmp_path):
    dm = make_dm(xray_root, tmp_path, min_val_images=8)
    dm.setup("fit")
    assert len(dm.splits["val"]) == 8 and len(dm.splits["train"]) == 96


def test_mixed_sizes_and_modes_decode_to_requested_shape(xray_root, tmp_path):
    files = scan_split(xray_root, "train")
    modes = {Image.open(p).mode for p in files.paths}
    assert {"L", "RGB"} <= modes
    rgb = decode_images(files.paths, files.labels, Preprocess(40, 3))
    gray = decode_images(files.paths, files.labels, Preprocess(40, 1))
    assert rgb.images.shape == (96, 3, 40, 40) and gray.images.shape == (96, 1, 40, 40)
    assert rgb.labels.tolist() == list(files.labels)


def test_cache_hit_returns_same_tensor_without_decoding(xray_root, tmp_path, monkeypatch):
    files = scan_split(xray_root, "test")
    first = decode_images(files.paths, files.labels, Preprocess(32, 1), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("images-*/meta.json"))) == 1
    monkeypatch.setattr(Preprocess, "load", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    second = decode_images(files.paths, files.labels, Preprocess(32, 1), cache_dir=tmp_path)
    assert torch.equal(first.images, second.images)


def test_cache_is_invalidated_by_a_changed_file(tmp_path):
    root = make_chest_xray_tree(tmp_path / "data", {"test": (3, 3)})
    files = scan_split(root, "test")
    first = decode_images(files.paths, files.labels, Preprocess(32, 1), cache_dir=tmp_path / "c")
    target = files.paths[0]
    Image.fromarray(np.full((50, 50), 255, np.uint8)).save(target, format="PNG" if target.endswith("png") else "JPEG")
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = decode_images(files.paths, files.labels, Preprocess(32, 1), cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("images-*/meta.json"))) == 2
    assert not torch.equal(first.images[0], second.images[0])
    assert second.images[0].float().mean() > 250  # the new white image, not the stale one
    assert torch.equal(first.images[1:], second.images[1:])


def test_missing_root_is_one_clear_error(tmp_path):
    with pytest.raises(DataLayoutError, match="does not exist.*train/ val/ test/"):
        make_dm(tmp_path / "nope", tmp_path).check_layout()


def test_missing_train_split(tmp_path):
    root = make_chest_xray_tree(tmp_path / "d", {"test": (2, 2)})
    with pytest.raises(DataLayoutError, match="missing split folder .*train"):
        make_dm(root, tmp_path).check_layout(("fit",))
    make_dm(root, tmp_path).check_layout(("test",))  # evaluation needs only test/


def test_missing_extra_and_empty_class_folders(tmp_path):
    root = make_chest_xray_tree(tmp_path / "d", {"train": (4, 4)})
    shutil.rmtree(root / "train" / "NORMAL")
    with pytest.raises(DataLayoutError, match="missing NORMAL"):
        scan_split(root, "train")
    (root / "train" / "NORMAL").mkdir()
    with pytest.raises(DataLayoutError, match="has no images"):
        scan_split(root, "train")
    (root / "train" / "COVID").mkdir()
    with pytest.raises(DataLayoutError, match="unexpected COVID"):
        scan_split(root, "train")


def test_macos_and_windows_debris_is_ignored(tmp_path):
    root = make_chest_xray_tree(tmp_path / "d", {"train": (3, 3)})
    (root / "train" / "__MACOSX" / "NORMAL").mkdir(parents=True)
    (root / "train" / "__MACOSX" / "NORMAL" / "._IM-0001-0001.jpeg").write_bytes(b"junk")
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    (root / "train" / "NORMAL" / "Thumbs.db").write_bytes(b"junk")
    (root / "train" / "NORMAL" / "._IM-0001-0001.jpeg").write_bytes(b"junk")
    files = scan_split(root, "train")
    assert len(files) == 6


def test_sampler_shuffles_by_epoch_and_shards_without_padding():
    s = EpochBatchSampler(10, 4, shuffle=True, seed=1)
    e0 = [i for b in s for i in b]
    s.set_epoch(1)
    e1 = [i for b in s for i in b]
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    s.set_epoch(0)
    assert [i for b in s for i in b] == e0  # same epoch, same order: resumable
    shards = [[i for b in EpochBatchSampler(11, 4, shuffle=False, rank=r, world_size=2) for i in b] for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(11))  # every val image exactly once
    assert len(EpochBatchSampler(11, 4, shuffle=False, rank=0, world_size=2)) == 2


def test_training_never_yields_a_single_image_batch():
    s = EpochBatchSampler(17, 8, shuffle=True)
    assert [len(b) for b in s] == [8, 8] and len(s) == 2
    assert [len(b) for b in EpochBatchSampler(17, 8, shuffle=False)] == [8, 8, 1]  # evaluation keeps all
    assert [len(b) for b in EpochBatchSampler(18, 8, shuffle=True)] == [8, 8, 2]


@pytest.mark.slow
def test_disk_cache_is_memory_mapped_and_shared_by_readers(xray_root, tmp_path):
    files = scan_split(xray_root, "train")
    a = decode_images(files.paths, files.labels, Preprocess(32, 1), cache_dir=tmp_path)
    b = decode_images(files.paths, files.labels, Preprocess(32, 1), cache_dir=tmp_path)
    cache_file = next(tmp_path.glob("images-*/images.u8"))
    # read through a memory map of the one file (copy-on-write, never written), not a private copy
    assert str(cache_file) in Path("/proc/self/maps").read_text()
    assert cache_file.stat().st_size == 96 * 32 * 32
    in_memory = decode_images(files.paths, files.labels, Preprocess(32, 1))
    assert torch.equal(a.images, in_memory.images) and torch.equal(a.ok, in_memory.ok)
    assert torch.equal(b.images, a.images)  # the second reader maps the same rows
    # another process reads the same cache (as a second run or a DDP rank would)
    import subprocess
    import sys

    code = (
        "import sys, torch; from pneumonia.data.cache import decode_images; "
        "from pneumonia.data.folder import scan_split; from pneumonia.data.preprocess import Preprocess; "
        f"f = scan_split({str(xray_root)!r}, 'train'); "
        "import pneumonia.data.preprocess as pp; pp.Preprocess.load = None; "  # decoding would fail
        f"d = decode_images(f.paths, f.labels, Preprocess(32, 1), cache_dir={str(tmp_path)!r}); "
        "print(int(d.images.sum()))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) == int(a.images.sum())


def test_interrupted_cache_build_resumes_where_it_stopped(xray_root, tmp_path, monkeypatch):
    import pneumonia.data.cache as cache

    monkeypatch.setattr(cache, "CHUNK", 10)
    files = scan_split(xray_root, "train")
    original = Preprocess.load
    calls = []

    def interrupted(self, path):
        calls.append(path)
        if len(calls) == 35:
            raise KeyboardInterrupt  # Ctrl-C in the 4th chunk
        return original(self, path)

    monkeypatch.setattr(Preprocess, "load", interrupted)
    with pytest.raises(KeyboardInterrupt):
        decode_images(files.paths, files.labels, Preprocess(32, 1), cache_dir=tmp_path, threads=1)
    folder = next(tmp_path.glob("images-*"))
    assert not (folder / "meta.json").exists()  # not complete: never served as a cache
    assert json.loads((folder / "progress.json").read_text())["done"] == [0, 1, 2]
    calls.clear()
    monkeypatch.setattr(Preprocess, "load", lambda self, path: (calls.append(path), original(self, path))[1])
    resumed = decode_images(files.paths, files.labels, Preprocess(32, 1), cache_dir=tmp_path, threads=1)
    assert len(calls) == 96 - 30  # the three chunks on disk are not decoded again
    fresh = decode_images(files.paths, files.labels, Preprocess(32, 1))
    assert torch.equal(resumed.images, fresh.images) and bool(resumed.ok.all())
    assert (folder / "meta.json").is_file() and not (folder / "progress.json").exists()


def test_damaged_cache_is_rebuilt_not_trusted(xray_root, tmp_path):
    files = scan_split(xray_root, "test")
    first = decode_images(files.paths, files.labels, Preprocess(32, 1), cache_dir=tmp_path)
    data_file = next(tmp_path.glob("images-*/images.u8"))
    with open(data_file, "r+b") as f:
        f.truncate(100)  # a cut file
    second = decode_images(files.paths, files.labels, Preprocess(32, 1), cache_dir=tmp_path)
    assert torch.equal(first.images, second.images)
    assert data_file.stat().st_size == 32 * 32 * 32
