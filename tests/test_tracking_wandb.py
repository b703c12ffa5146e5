"""W&B: logger=wandb's offline run (params, per-epoch metrics, tags, summary, model artifact)
read back from the run's own `.wandb` file, as `wandb sync` reads it; the one-line error
without wandb. No network: offline mode, W&B's folders under tmp_path, an unroutable server."""

import json
import struct
import time
from pathlib import Path

import pytest

from pneumonia.errors import ConfigError
from tests.helpers import logged_lines, train_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def finished_records(run_file: Path, timeout: float = 60.0) -> list:
    """The records of a finished offline run, read once its `exit` record is on disk: W&B's
    service writes the file after `run.finish()` returns, a moment later (in a full suite the
    file was read back empty: CI, 2 cores), and the process's exit waits for it."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(run_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def wandb_records(run_file: Path) -> list:
    """The protobuf records of an offline run's `run-<id>.wandb` file: W&B's header (`:W&B`,
    magic, version: 7 bytes), then LevelDB's log format (32 KiB blocks of records, each with a
    7-byte header: checksum, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, partial, chunks = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # a block's zero-filled tail
            pos += left
            continue
        if pos + 7 + length > len(data):  # a record still being written
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind in (2, 3):
            partial = (partial if kind == 3 else b"") + chunk
        elif kind == 4:
            chunks.append(partial + chunk)
    records = []
    for raw in chunks:
        record = pb.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def offline_wandb(mp: pytest.MonkeyPatch, home: Path) -> None:
    """W&B offline, its folders under `home`, no key, an unroutable server."""
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        mp.setenv(name, str(home / name.lower()))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: a request would fail
    mp.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture(scope="module")
def wandb_run(xray_root, tmp_path_factory):
    """A tiny run trained 2 epochs with logger=wandb_tensorboard, W&B offline: (run folder,
    its records, the run's closing lines)."""
    pytest.importorskip("wandb")

    from pneumonia.runners.train import train

    out = tmp_path_factory.mktemp("wandb_run")
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp, logged_lines() as lines:
        offline_wandb(mp, home)
        train(
            train_cfg(
                xray_root,
                out,
                "trainer.max_epochs=2",
                "logger=wandb_tensorboard",
                "seed=3",
                "optimizer.lr=0.002",
                "callbacks.early_stopping=null",
                "intervals.resamples=0",
            )
        )
    [run_file] = out.glob("wandb/offline-run-*/run-*.wandb")
    return out, finished_records(run_file), "\n".join(lines)


@pytest.mark.slow
def test_offline_run_holds_params_metrics_tags_and_the_model(wandb_run, xray_root):
    out, records, ending = wandb_run
    kinds = [r.WhichOneof("record_type") for r in records]
    info = json.loads((out / "wandb_run.json").read_text())
    assert info["offline"] and Path(info["folder"]).parent == out / "wandb"
    assert Path(info["folder"]).name.startswith("offline-run-") and info["folder"].endswith(info["run_id"])
    assert info["folders"] == [info["folder"]]
    assert f"W&B run {info['run_id']} offline (upload: wandb sync {info['folder']})" in ending

    run = [r.run for r in records if r.WhichOneof("record_type") == "run"][-1]
    assert run.run_id == info["run_id"] and run.project == "pneumonia"
    assert run.display_name == f"train/{out.name}"
    config = {
        item_key(i): json.loads(i.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for i in r.config.update
    }
    assert config["seed"] == 3 and config["optimizer.lr"] == 0.002 and config["trainer.max_epochs"] == 2
    assert config["model._target_"] == "pneumonia.models.CustomCNN" and config["data.root"] == str(xray_root)
    assert len(config["tags.git.commit"]) == 40 and len(config["tags.data.fingerprint"]) == 16
    assert config["tags.data.root"] == str(xray_root) and config["tags.accelerator"] == "cpu"
    tags = set(run.tags)
    assert f"git.commit={config['tags.git.commit']}" in tags and "seed=3" in tags and "accelerator=cpu" in tags

    # every epoch's validation metrics, not only the last
    history = [
        {item_key(i): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    val_auroc = [h["val/auroc"] for h in history if "val/auroc" in h]
    assert len(val_auroc) == 2 and len({h["epoch"] for h in history if "val/auroc" in h}) == 2

    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({item_key(i): json.loads(i.value_json) for i in r.summary.update})
    val = json.loads((out / "val_metrics.json").read_text())["at_threshold"]
    train_summary = json.loads((out / "train_summary.json").read_text())
    assert summary["hp/val_auroc"] == pytest.approx(val["auroc"])
    assert summary["hp/val_threshold"] == pytest.approx(val["threshold"])
    assert summary["hp/val_auroc"] == pytest.approx(train_summary["val"]["auroc"])
    from pneumonia.inference.checkpoint import load_checkpoint
    from pneumonia.integrity import stored_digest

    best = out / "checkpoints" / "best.ckpt"
    assert summary["pneumonia.weights_digest"] == stored_digest(load_checkpoint(best))

    [artifact] = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.name == f"model-{info['run_id']}" and artifact.type == "model" and "best" in artifact.aliases
    files = {c.path: c for c in artifact.manifest.contents}
    assert set(files) == {"checkpoints/best.ckpt", "val_metrics.json", "train_summary.json"}
    assert files["checkpoints/best.ckpt"].size == best.stat().st_size  # the calibrated best.ckpt
    assert "exit" in kinds  # the run was finished: `wandb sync` uploads it whole
    assert any((out / "tensorboard").rglob("events.out.tfevents*"))


@pytest.mark.slow
def test_a_resumed_run_goes_on_in_its_wandb_run(xray_root, tmp_path, monkeypatch):
    """resume=<run folder>: the same W&B run id, a second offline folder, both in wandb_run.json
    and in the closing line's `wandb sync` command (which uploads them in order as one run)."""
    pytest.importorskip("wandb")
    from pneumonia.runners.train import train

    offline_wandb(monkeypatch, tmp_path / "wandb_home")
    out = tmp_path / "run"
    common = [
        "callbacks.early_stopping=null",
        "logger=wandb",
        "logger.wandb.log_checkpoint=false",
        "intervals.resamples=0",
    ]
    train(train_cfg(xray_root, out, "trainer.max_epochs=1", *common))
    first = json.loads((out / "wandb_run.json").read_text())
    with logged_lines() as lines:
        train(train_cfg(xray_root, out, "trainer.max_epochs=2", f"resume={out}", *common))
    info = json.loads((out / "wandb_run.json").read_text())
    assert info["run_id"] == first["run_id"] and info["folders"][0] == first["folder"]
    assert len(info["folders"]) == 2 and info["folder"] == info["folders"][1] != first["folder"]
    assert [Path(f).parent for f in info["folders"]] == [out / "wandb"] * 2
    # offline-run-<time>-<id>, and `-1` after it when both attempts started within one second
    assert all(Path(f).name.split("-")[3] == info["run_id"] for f in info["folders"])
    assert f"W&B run {info['run_id']} offline (upload: wandb sync {info['folders'][0]} {info['folders'][1]})" in (
        "\n".join(lines)
    )
    # the second attempt's own file: the same run, the epoch it went on with
    [run_file] = Path(info["folder"]).glob("run-*.wandb")
    records = finished_records(run_file)
    assert {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"} == {info["run_id"]}
    epochs = [
        json.loads(i.value_json)
        for r in records
        if r.WhichOneof("record_type") == "history"
        for i in r.history.item
        if item_key(i) == "epoch"
    ]
    assert epochs and set(epochs) == {1}  # the resumed attempt logged epoch 2 (0-based 1) only


def test_a_run_folder_with_a_wandb_run_goes_on_in_it(tmp_path):
    """The logger of a folder that already names a W&B run of its project resumes it; of another
    project, or a fresh folder, starts a new one; the closing note lists every offline folder."""
    pytest.importorskip("wandb")
    from pneumonia.tracking.wandb_run import RUN_FILE, wandb_logger, wandb_note

    folder = tmp_path / "run"
    first = str(folder / "wandb" / "offline-run-20250101_000000-abc123")
    assert wandb_note(folder) == ""
    fresh = wandb_logger(save_dir=str(folder), run_folder=str(folder))
    assert fresh._wandb_init.get("id") is None
    (folder / RUN_FILE).write_text(
        json.dumps({"run_id": "abc123", "project": "pneumonia", "offline": True, "folder": first})
    )
    logger = wandb_logger(save_dir=str(folder), run_folder=str(folder))
    assert logger._wandb_init["id"] == "abc123" and logger._wandb_init["resume"] == "allow"
    other = wandb_logger(project="chest", save_dir=str(folder), run_folder=str(folder))
    assert other._wandb_init.get("id") is None
    assert wandb_note(folder) == f"; W&B run abc123 offline (upload: wandb sync {first})"
    second = first.replace("000000", "010000")
    (folder / RUN_FILE).write_text(
        json.dumps(
            {"run_id": "abc123", "project": "pneumonia", "offline": True, "folder": second, "folders": [first, second]}
        )
    )
    assert wandb_note(folder) == f"; W&B run abc123 offline (upload: wandb sync {first} {second})"


def test_logger_wandb_without_wandb_is_one_line_before_decoding(xray_root, tmp_path, monkeypatch):
    import sys

    from pneumonia.data.datamodule import ChestXrayDataModule
    from pneumonia.runners.train import train

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError

    def decoded(*args, **kwargs):
        raise AssertionError("images decoded before the logger was built")

    monkeypatch.setattr(ChestXrayDataModule, "setup", decoded)
    with pytest.raises(ConfigError) as err:
        train(train_cfg(xray_root, tmp_path / "run", "trainer.max_epochs=1", "logger=wandb"))
    message = str(err.value)
    assert "\n" not in message and "logger=wandb needs the Python package 'wandb'" in message
    assert "pip install 'pneumonia[tracking]'" in message
