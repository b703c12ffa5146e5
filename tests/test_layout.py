"""Whatever folder a user has: the Kaggle archive (nested duplicate, __MACOSX), kagglehub's
cache, the Mendeley release; and the download path, with a local folder standing in for
kagglehub's cache (the real download needs a network and is not exercised here)."""

import shutil
import sys
import types
from pathlib import Path

import pytest

from pneumonia.data.datamodule import ChestXrayDataModule
from pneumonia.data.download import DownloadError, ensure, fetch
from pneumonia.data.folder import DataLayoutError
from pneumonia.data.layout import KAGGLE_COUNTS, find_data_root
from pneumonia.data.synthetic import make_chest_xray_tree

COUNTS = {"train": (10, 10), "val": (2, 2), "test": (4, 4)}


def kaggle_archive(top: Path) -> Path:
    """`top/chest_xray/{train,val,test}`, its nested duplicate and `__MACOSX/`, like the zip."""
    real = make_chest_xray_tree(top / "chest_xray", COUNTS)
    shutil.copytree(real / "train", real / "chest_xray" / "train")
    shutil.copytree(real / "val", real / "chest_xray" / "val")
    shutil.copytree(real / "test", real / "chest_xray" / "test")
    (top / "__MACOSX" / "chest_xray" / "train" / "NORMAL").mkdir(parents=True)
    (top / "__MACOSX" / "chest_xray" / "train" / "NORMAL" / "._IM-0001-0001.jpeg").write_bytes(b"junk")
    (real / ".DS_Store").write_bytes(b"junk")
    return real


def test_kaggle_archive_top_folder_uses_one_copy_of_the_nested_duplicate(tmp_path, caplog):
    real = kaggle_archive(tmp_path / "download")
    with caplog.at_level("INFO"):
        assert find_data_root(tmp_path / "download") == real
    assert "hold the same images" in caplog.text
    assert find_data_root(real) == real  # the right folder given directly
    dm = ChestXrayDataModule(root=str(tmp_path / "download"), image_size=16, cache_dir=None, val_fraction=0.25)
    dm.setup("fit")
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 20  # one copy, not two


def test_two_different_candidate_trees_are_one_line_error(tmp_path):
    make_chest_xray_tree(tmp_path / "a" / "chest_xray", COUNTS)
    make_chest_xray_tree(tmp_path / "b" / "chest_xray", COUNTS, seed=1)
    with pytest.raises(DataLayoutError, match="2 different sets of split folders: .*a/chest_xray, .*b/chest_xray"):
        find_data_root(tmp_path)


def test_mendeley_layout_train_and_test_only(tmp_path):
    real = make_chest_xray_tree(tmp_path / "ChestXRay2017" / "chest_xray", {"train": (10, 10), "test": (4, 4)})
    assert find_data_root(tmp_path) == real
    dm = ChestXrayDataModule(root=str(tmp_path), image_size=16, cache_dir=None, val_fraction=0.25)
    dm.check_layout(("fit", "test"))
    dm.setup("fit")
    assert len(dm.splits["val"]) > 0  # carved from train/, by patient


def test_a_file_as_root_and_a_folder_without_splits_are_clear(tmp_path):
    (tmp_path / "file.zip").write_bytes(b"zip")
    with pytest.raises(DataLayoutError, match="is a file, not a folder"):
        ChestXrayDataModule(root=str(tmp_path / "file.zip")).check_layout()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataLayoutError, match="missing split folder"):
        ChestXrayDataModule(root=str(tmp_path / "empty")).check_layout()


def full_release(top: Path) -> Path:
    """Empty files with the release's counts and the Kaggle archive's nesting (counting, not decoding)."""
    for tree in (top / "chest_xray", top / "chest_xray" / "chest_xray"):
        for split, per_class in KAGGLE_COUNTS.items():
            for cls, n in per_class.items():
                folder = tree / split / cls
                folder.mkdir(parents=True)
                for i in range(n):
                    (folder / f"IM-{i:04d}-0001.jpeg").touch()
    return top / "chest_xray"


@pytest.fixture
def fake_kagglehub(monkeypatch, tmp_path):
    """A stand-in for kagglehub whose cache is a local folder."""
    calls = []
    module = types.SimpleNamespace(calls=calls, cache=tmp_path / "kagglehub_cache")

    def dataset_download(handle, force_download=False):
        calls.append((handle, force_download))
        return str(module.cache)

    module.dataset_download = dataset_download
    monkeypatch.setitem(sys.modules, "kagglehub", module)
    return module


def test_download_links_data_root_to_the_checked_release(fake_kagglehub, tmp_path):
    real = full_release(fake_kagglehub.cache)
    root = tmp_path / "project" / "data" / "chest_xray"
    ensure(root)
    assert fake_kagglehub.calls == [("paultimothymooney/chest-xray-pneumonia", False)]
    assert root.is_symlink() and root.resolve() == real.resolve()
    ensure(root)  # there already: no second download
    assert len(fake_kagglehub.calls) == 1


@pytest.mark.slow
def test_partial_download_is_an_error_not_a_smaller_dataset(fake_kagglehub, tmp_path):
    real = full_release(fake_kagglehub.cache)
    for victim in list((real / "train" / "PNEUMONIA").iterdir())[:5]:
        victim.unlink()
    shutil.rmtree(real / "chest_xray")
    with pytest.raises(DataLayoutError, match="not the complete Kaggle release.*train/PNEUMONIA has 3870 of 3875"):
        fetch()


def test_network_failure_and_missing_kagglehub_are_one_line(monkeypatch):
    def offline(handle, force_download=False):
        raise ConnectionError("Max retries exceeded with url: https://www.kaggle.com/api/v1/...\nmore")

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=offline))
    with pytest.raises(DownloadError, match=r"could not download .*Max retries exceeded.*no network\?"):
        fetch()
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # import fails
    with pytest.raises(DownloadError, match=r"needs kagglehub: pip install -e '.\[data\]'"):
        fetch()


def test_disk_full_says_where_and_what_to_do(monkeypatch):
    import errno

    def full(handle, force_download=False):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=full))
    with pytest.raises(DownloadError, match="disk is full.*KAGGLEHUB_CACHE"):
        fetch()


@pytest.mark.slow
def test_datamodule_download_knob_fetches_when_root_is_missing(fake_kagglehub, tmp_path):
    real = full_release(fake_kagglehub.cache)
    root = tmp_path / "missing" / "chest_xray"
    dm = ChestXrayDataModule(root=str(root), download=True)
    dm.check_layout(("fit", "test"))  # downloads, links, finds the split set, checks the folders
    assert root.is_symlink() and dm.data_root.resolve() == real.resolve()


@pytest.mark.slow
def test_download_cli_with_a_stand_in_kagglehub(tmp_path):
    import subprocess

    full_release(tmp_path / "cache")
    fake = tmp_path / "fakepkgs" / "kagglehub"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        f"def dataset_download(handle, force_download=False):\n    return {str(tmp_path / 'cache')!r}\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "fakepkgs")}
    res = subprocess.run(
        [sys.executable, "-m", "pneumonia.data.download", "--link", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "data").is_symlink() and f"python train.py data.root={tmp_path / 'data'}" in res.stdout
    (tmp_path / "data").unlink()
    (tmp_path / "data").mkdir()  # a real folder in the way: refused, not replaced
    res = subprocess.run(
        [sys.executable, "-m", "pneumonia.data.download", "--link", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "exists and is not a link" in res.stderr
