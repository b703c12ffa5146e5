import numpy as np
import pytest

from pneumonia.data.folder import scan_split
from pneumonia.data.patients import grouped_split, patient_id
from pneumonia.errors import ConfigError


@pytest.mark.parametrize(
    "name, pid",
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("IM-0115-0001.jpeg", "normal115"),
        ("NORMAL2-IM-0115-0002.jpeg", "normal115"),
        ("something_else.png", "file:something_else"),
    ],
)
def test_patient_id_from_kaggle_names(name, pid):
    assert patient_id(f"/x/NORMAL/{name}") == pid


def test_split_never_puts_a_patient_on_both_sides(xray_root):
    files = scan_split(xray_root, "train")
    for seed in range(5):
        tr, va = grouped_split(files.paths, files.labels, 0.25, seed)
        assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(files)
        train_patients = {patient_id(files.paths[i]) for i in tr}
        val_patients = {patient_id(files.paths[i]) for i in va}
        assert not train_patients & val_patients
        # stratified: both classes in validation, near the requested share each
        val_labels = np.array(files.labels)[va]
        for cls in (0, 1):
            share = (val_labels == cls).sum() / (np.array(files.labels) == cls).sum()
            assert 0.2 <= share <= 0.35


def test_split_is_seeded():
    paths = [f"person{i // 2}_bacteria_{i}.jpeg" for i in range(40)] + [f"IM-{i:04d}-0001.jpeg" for i in range(40)]
    labels = [1] * 40 + [0] * 40
    a = grouped_split(paths, labels, 0.2, 1)
    b = grouped_split(paths, labels, 0.2, 1)
    c = grouped_split(paths, labels, 0.2, 2)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not (a[1].shape == c[1].shape and (a[1] == c[1]).all())


def test_real_data_split_has_no_shared_patient_or_duplicate(tmp_path):
    from tests.helpers import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data/chest_xray is not here")
    files = scan_split(SHARED_DATA, "train")
    tr, va = grouped_split(files.paths, files.labels, 0.1, 42)
    assert not {patient_id(files.paths[i]) for i in tr} & {patient_id(files.paths[i]) for i in va}
    assert 0.09 < len(va) / len(files) < 0.12


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, "abc"])
def test_val_fraction_outside_open_interval_is_rejected(fraction):
    from pneumonia.data.datamodule import ChestXrayDataModule

    with pytest.raises(
        ConfigError, match="^val_fraction="
    ):  # the class names its argument; the config layer adds data.
        ChestXrayDataModule(val_fraction=fraction)
