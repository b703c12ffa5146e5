"""predict.py: files, folders, globs and lists; DICOM; heatmaps and galleries; bad input."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumonia.data.folder import DataLayoutError
from pneumonia.errors import CheckpointError, ConfigError
from pneumonia.inference import Predictor
from pneumonia.runners.predict import predict
from tests.helpers import compose_cfg, run_cli, write_dicom


def predict_cfg(ckpt, inputs, out, *overrides):
    return compose_cfg("predict", [f"ckpt_path={ckpt}", f"inputs={inputs}", "device=cpu", *overrides], out)


def read_rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv") as f:
        return list(csv.DictReader(f))


def test_folder_is_predicted_with_labels_from_folder_names(tiny_checkpoint, xray_root, tmp_path):
    summary = predict(predict_cfg(tiny_checkpoint, xray_root / "test", tmp_path, "batch_size=5"))
    rows = read_rows(tmp_path)
    assert len(rows) == 32 and summary["n"] == 32
    threshold = Predictor.from_checkpoint(tiny_checkpoint).threshold
    for r in rows:
        assert r["label"] == Path(r["path"]).parent.name  # NORMAL/ or PNEUMONIA/
        assert r["prediction"] == ("PNEUMONIA" if float(r["probability"]) >= threshold else "NORMAL")
        assert float(r["threshold"]) == pytest.approx(threshold, abs=1e-6)
    correct = sum(r["label"] == r["prediction"] for r in rows)
    assert summary["labelled"]["accuracy"] == pytest.approx(correct / 32)
    assert summary["labelled"]["auroc"] > 0.8  # the model learnt the synthetic task
    assert json.loads((tmp_path / "summary.json").read_text())["n"] == 32


def test_list_of_file_folder_and_glob_each_file_once(tiny_checkpoint, xray_root, tmp_path):
    one = sorted((xray_root / "test" / "NORMAL").iterdir())[0]
    inputs = f"[{one},{xray_root / 'test' / 'NORMAL'},'{xray_root}/test/PNEUMONIA/*.png']"
    predict(predict_cfg(tiny_checkpoint, inputs, tmp_path))
    rows = read_rows(tmp_path)
    pngs = sorted(str(p) for p in (xray_root / "test" / "PNEUMONIA").glob("*.png"))
    assert rows[0]["path"] == str(one)
    assert [r["path"] for r in rows] == list(
        dict.fromkeys([str(one), *sorted(str(p) for p in (xray_root / "test" / "NORMAL").iterdir()), *pngs])
    )


def test_folder_walk_ignores_debris_and_non_images_and_reads_dicom(tiny_checkpoint, tmp_path):
    scans = tmp_path / "scans"
    (scans / "sub" / "__MACOSX").mkdir(parents=True)
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (64, 80), dtype=np.uint8)
    Image.fromarray(gray).save(scans / "a.png")
    write_dicom(scans / "sub" / "b.dcm", (gray.astype(np.uint16) * 16))  # 12-bit
    write_dicom(scans / "sub" / "extensionless", gray)  # a PACS export without extension
    write_dicom(scans / "rgb.dcm", np.stack([gray] * 3, -1), photometric="RGB", samples=3)
    (scans / ".DS_Store").write_bytes(b"junk")
    (scans / "Thumbs.db").write_bytes(b"junk")
    (scans / "notes.txt").write_text("not an image")
    (scans / "sub" / "__MACOSX" / "._a.png").write_bytes(b"junk")
    predict(predict_cfg(tiny_checkpoint, scans, tmp_path / "out"))
    rows = read_rows(tmp_path / "out")
    assert sorted(Path(r["path"]).name for r in rows) == ["a.png", "b.dcm", "extensionless", "rgb.dcm"]
    probs = {Path(r["path"]).name: float(r["probability"]) for r in rows}
    # the same pixels as PNG, 12-bit DICOM, 8-bit DICOM and RGB DICOM: the same model input
    assert max(probs.values()) - min(probs.values()) < 0.02
    assert not (tmp_path / "out" / "bad_images.tsv").exists()


@pytest.mark.slow
def test_bad_files_are_skipped_and_reported_and_rows_are_kept(tiny_checkpoint, xray_root, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(xray_root / "test" / "NORMAL", folder)
    good = sorted(folder.iterdir())
    (folder / "zz_truncated.jpeg").write_bytes(good[0].read_bytes()[:100])
    write_dicom(folder / "zz_no_pixels.dcm", np.zeros((8, 8), np.uint8), pixel_data=False)
    big = (np.random.default_rng(1).random((4000, 6000)) * 255).astype(np.uint8)
    Image.fromarray(big).save(folder / "big_6000px.jpeg", quality=80)
    summary = predict(predict_cfg(tiny_checkpoint, folder, tmp_path / "skip", "batch_size=4"))
    rows = read_rows(tmp_path / "skip")
    assert len(good) == 16 and len(rows) == 17 and summary["skipped"] == 2
    assert "big_6000px.jpeg" in {Path(r["path"]).name for r in rows}
    bad = dict(line.split("\t") for line in (tmp_path / "skip" / "bad_images.tsv").read_text().splitlines())
    assert set(Path(p).name for p in bad) == {"zz_truncated.jpeg", "zz_no_pixels.dcm"}
    assert "has no pixel data" in bad[str(folder / "zz_no_pixels.dcm")]
    # on_bad_image=error stops at the first bad file, with the rows before it on disk
    with pytest.raises(DataLayoutError, match="zz_no_pixels.dcm' has no pixel data.*16 rows predicted before it"):
        predict(predict_cfg(tiny_checkpoint, folder, tmp_path / "stop", "batch_size=4", "on_bad_image=error"))
    kept = read_rows(tmp_path / "stop")
    assert len(kept) == 16 and [r["path"] for r in kept] == [r["path"] for r in rows[: len(kept)]]


def test_explain_writes_a_heatmap_per_image_and_gallery_a_grid(tiny_checkpoint, xray_root, tmp_path):
    files = (
        sorted((xray_root / "test" / "PNEUMONIA").iterdir())[:3] + sorted((xray_root / "test" / "NORMAL").iterdir())[:2]
    )
    inputs = "[" + ",".join(str(f) for f in files) + "]"
    predict(predict_cfg(tiny_checkpoint, inputs, tmp_path, "explain=true", "gallery=true", "gallery_size=4"))
    heatmaps = sorted((tmp_path / "heatmaps").glob("*.png"))
    assert len(heatmaps) == 5 and heatmaps[0].name.startswith("00001_")
    with Image.open(heatmaps[0]) as img:
        assert img.size == (400, 440)
    with Image.open(tmp_path / "gallery.png") as img:
        assert img.size == (4 * 240, 280)  # 4 thumbnails in one row: gallery_size caps it


@pytest.mark.slow
def test_bad_settings_and_inputs_are_one_line_errors(tiny_checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataLayoutError, match="holds no image"):
        predict(predict_cfg(tiny_checkpoint, tmp_path / "empty", tmp_path / "o1"))
    with pytest.raises(DataLayoutError, match="does not exist"):
        predict(predict_cfg(tiny_checkpoint, tmp_path / "nowhere", tmp_path / "o2"))
    with pytest.raises(DataLayoutError, match="matches no image"):
        predict(predict_cfg(tiny_checkpoint, f"'{tmp_path}/*.jpeg'", tmp_path / "o3"))
    with pytest.raises(CheckpointError, match="does not exist"):
        predict(predict_cfg(tmp_path / "missing.ckpt", tmp_path, tmp_path / "o4"))
    with pytest.raises(ConfigError, match="batch_size=0"):
        predict(predict_cfg(tiny_checkpoint, tmp_path, tmp_path / "o5", "batch_size=0"))
    with pytest.raises(ConfigError, match="threshold=1.5"):
        predict(predict_cfg(tiny_checkpoint, tmp_path, tmp_path / "o6", "threshold=1.5"))


@pytest.mark.slow
def test_cli_prints_a_table_and_one_line_errors(tiny_checkpoint, xray_root, tmp_path):
    res = run_cli(
        "predict.py",
        f"ckpt_path={tiny_checkpoint}",
        f"inputs={xray_root / 'test'}",
        "print_rows=3",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "P(pneumonia)" in res.stdout and "... and 29 more rows in predictions.csv" in res.stdout
    assert "32 image(s) predicted" in res.stdout and "under NORMAL/PNEUMONIA folders: accuracy" in res.stdout
    res = run_cli("predict.py", f"ckpt_path={tiny_checkpoint}", f"hydra.run.dir={tmp_path / 'run2'}")
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: inputs is required")
    res = run_cli(
        "predict.py", f"ckpt_path={tmp_path / 'nope.ckpt'}", f"inputs={xray_root}", f"hydra.run.dir={tmp_path / 'run3'}"
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr and "does not exist" in res.stderr
