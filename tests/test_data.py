import os
import shutil
import time

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
    assert len(list(tmp_path.glob("images-*.pt"))) == 1
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
    assert len(list((tmp_path / "c").glob("images-*.pt"))) == 2
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
