"""MLflow: logger=mlflow's run (params, per-epoch metrics, tags, artifacts), eval.py's results
on the checkpoint's run, export.py register= (a registry version with the ONNX model, its
card and the training run), predict.py model_uri=, a sweep's runs, one-line errors. Every
check reads back through MlflowClient."""

import csv
import json
import sys

import pytest

from pneumonia.errors import UserError
from pneumonia.runners.quick import check_or_fail
from tests.helpers import PROJECT_ROOT, TINY, artifact_paths, compose_cfg, logged_lines, train_cfg

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.usefixtures("one_thread")

from mlflow import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    return folder, f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture(scope="module")
def tracked(xray_root, store, tmp_path_factory):
    """A tiny run trained 2 epochs with logger=mlflow_tensorboard: (run folder, client, run id,
    the run's closing lines)."""

    from pneumonia.runners.train import train

    out = tmp_path_factory.mktemp("tracked_run")
    with logged_lines() as lines:
        train(
            train_cfg(
                xray_root,
                out,
                "trainer.max_epochs=2",
                "logger=mlflow_tensorboard",
                "seed=3",
                "callbacks.early_stopping=null",
                f"mlflow.tracking_uri={store[1]}",
            )
        )
    info = json.loads((out / "mlflow_run.json").read_text())
    return out, MlflowClient(store[1], registry_uri=store[1]), info["run_id"], "\n".join(lines)


@pytest.mark.slow
def test_training_run_holds_params_metrics_tags_and_artifacts(tracked, xray_root, store):
    out, client, run_id, tracked_ending = tracked
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith((store[0] / "mlartifacts").as_uri())  # beside the SQLite store
    params = run.data.params
    assert params["seed"] == "3" and params["trainer.max_epochs"] == "2"
    assert params["model._target_"] == "pneumonia.models.CustomCNN" and params["data.root"] == str(xray_root)
    # every epoch's validation metrics, not only the last
    history = client.get_metric_history(run_id, "val/auroc")
    assert len(history) == 2 and len({m.step for m in history}) == 2
    val = json.loads((out / "val_metrics.json").read_text())["at_threshold"]
    assert run.data.metrics["hp/val_threshold"] == pytest.approx(val["threshold"])
    assert run.data.metrics["hp/val_auroc"] == pytest.approx(val["auroc"])
    tags = run.data.tags
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("True", "False")
    assert tags["data.root"] == str(xray_root) and len(tags["data.fingerprint"]) == 16
    assert tags["seed"] == "3" and tags["accelerator"] == "cpu" and tags["precision"]
    assert tags["mlflow.runName"] == f"train/{out.name}"
    from pneumonia.inference.checkpoint import load_checkpoint
    from pneumonia.integrity import stored_digest

    assert tags["pneumonia.weights_digest"] == stored_digest(load_checkpoint(out / "checkpoints" / "best.ckpt"))
    assert f"MLflow run {run_id} (mlflow ui --backend-store-uri {store[1]})" in tracked_ending
    files = artifact_paths(client, run_id)
    assert {"checkpoints/best.ckpt", "val_metrics.json", "train_summary.json"} <= set(files)
    assert any(f.startswith("tensorboard/events.out.tfevents") for f in files)
    # the logged checkpoint is the calibrated best.ckpt, byte for byte
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="checkpoints/best.ckpt", tracking_uri=store[1], dst_path=str(out / "dl")
    )
    assert open(local, "rb").read() == (out / "checkpoints" / "best.ckpt").read_bytes()


@pytest.mark.slow
def test_a_resumed_run_goes_on_in_its_mlflow_run(xray_root, tmp_path):
    from pneumonia.runners.train import train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    common = [
        "callbacks.early_stopping=null",
        "logger=mlflow",
        f"mlflow.tracking_uri={uri}",
        "intervals.resamples=0",
        "mlflow.log_checkpoint=false",
    ]
    train(train_cfg(xray_root, out, "trainer.max_epochs=1", *common))
    first = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    train(train_cfg(xray_root, out, "trainer.max_epochs=2", f"resume={out}", *common))
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == first
    client = MlflowClient(uri)
    assert len(client.search_runs([client.get_experiment_by_name("pneumonia").experiment_id])) == 1
    assert len(client.get_metric_history(first, "val/auroc")) == 2


def test_data_fingerprint_follows_the_files_not_the_folder(tmp_path):
    from pneumonia.tracking.run_info import data_fingerprint

    for name in ("a", "b"):
        (tmp_path / name / "NORMAL").mkdir(parents=True)
        (tmp_path / name / "NORMAL" / "x.jpeg").write_bytes(b"12345")
    fp = {n: data_fingerprint({"train": [tmp_path / n / "NORMAL" / "x.jpeg"]}, tmp_path / n) for n in ("a", "b")}
    assert fp["a"] == fp["b"]
    (tmp_path / "b" / "NORMAL" / "x.jpeg").write_bytes(b"123456")
    assert data_fingerprint({"train": [tmp_path / "b" / "NORMAL" / "x.jpeg"]}, tmp_path / "b") != fp["a"]


@pytest.mark.slow
def test_eval_logs_to_the_checkpoint_run(tracked, tmp_path, store):
    from pneumonia.runners.eval import evaluate

    out, client, run_id, _ = tracked
    # a copy of the checkpoint elsewhere: found through its weights checksum in the store
    copy = tmp_path / "elsewhere" / "best.ckpt"
    copy.parent.mkdir()
    copy.write_bytes((out / "checkpoints" / "best.ckpt").read_bytes())
    for ckpt, name in ((out / "checkpoints" / "best.ckpt", "eval_a"), (copy, "eval_b")):
        rep = evaluate(
            compose_cfg(
                "eval",
                [
                    f"ckpt_path={ckpt}",
                    "logger=none",
                    "trainer.accelerator=cpu",
                    "intervals.resamples=20",
                    "gallery_size=0",
                    "describe=false",
                    f"mlflow.tracking_uri={store[1]}",
                ],
                tmp_path / name,
            )
        )
        files = artifact_paths(client, run_id, f"eval/{name}")
        assert {f"eval/{name}/metrics.json", f"eval/{name}/report.html", f"eval/{name}/figures/roc_curve.png"} <= set(
            files
        )
    metrics = client.get_run(run_id).data.metrics
    assert metrics["test/auroc"] == pytest.approx(rep["auroc"])
    assert metrics["test/auroc_ci_low"] <= metrics["test/auroc"] <= metrics["test/auroc_ci_high"]


@pytest.mark.slow
def test_register_then_predict_from_the_registry_scores_like_the_checkpoint(
    tracked, xray_root, tmp_path, store, capsys
):
    from pneumonia.export.runner import export
    from pneumonia.runners.predict import predict

    out, client, run_id, _ = tracked
    ckpt = out / "checkpoints" / "best.ckpt"
    meta = export(
        compose_cfg(
            "export",
            [f"ckpt_path={ckpt}", "register=pneumonia", "alias=champion", f"mlflow.tracking_uri={store[1]}"],
            tmp_path / "export",
        )
    )
    assert meta["registered"]["version"] == 1 and meta["registered"]["training_run_id"] == run_id
    version = client.get_model_version_by_alias("pneumonia", "champion")
    assert str(version.version) == "1" and version.run_id == run_id
    tags = version.tags
    assert float(tags["threshold"]) == pytest.approx(meta["threshold"], rel=1e-5)
    assert tags["threshold_method"] == meta["threshold_method"] and tags["format"] == "onnx"
    assert tags["training_run_id"] == run_id and tags["val.auroc"] and tags["val.auroc.ci95"].startswith("[")
    assert tags["sha256"] == meta["sha256"]
    files = artifact_paths(client, run_id, "export/export")
    assert {"export/export/model.onnx", "export/export/model.json", "export/export/MODEL_CARD.md"} <= set(files)

    # a second export: version 2; the alias stays on 1 until moved from the command line
    export(
        compose_cfg(
            "export",
            [f"ckpt_path={ckpt}", "register=pneumonia", "verify=false", f"mlflow.tracking_uri={store[1]}"],
            tmp_path / "export2",
        )
    )
    status, listing, err = cli(capsys, "list", "pneumonia", uri=store[1])
    assert status == 0, err
    lines = listing.strip().splitlines()[1:]
    assert [ln.split()[0] for ln in lines] == ["1", "2"] and "@champion" in lines[0]
    status, _, err = cli(capsys, "alias", "pneumonia", "2", "champion", uri=store[1])
    assert status == 0, err
    assert str(client.get_model_version_by_alias("pneumonia", "champion").version) == "2"

    summaries, rows = {}, {}
    for name, overrides in (
        ("registry", ["model_uri=models:/pneumonia@champion", f"mlflow.tracking_uri={store[1]}"]),
        ("torch", [f"ckpt_path={ckpt}", "precision=32-true"]),
    ):
        summaries[name] = predict(
            compose_cfg("predict", [f"inputs={xray_root / 'test'}", "device=cpu", *overrides], tmp_path / name)
        )
        with open(tmp_path / name / "predictions.csv") as f:
            rows[name] = list(csv.DictReader(f))
    assert summaries["registry"]["backend"] == "onnx"
    assert [p.parent.name for p in (tmp_path / "registry" / "model").rglob("model.onnx")] == ["export2"]  # version 2
    assert len(rows["registry"]) == len(rows["torch"]) == 32
    for a, b in zip(rows["torch"], rows["registry"]):
        assert a["path"] == b["path"] and a["prediction"] == b["prediction"]
        assert abs(float(a["probability"]) - float(b["probability"])) <= 1e-4


@pytest.mark.slow
def test_app_and_serve_take_a_model_uri(tracked, tmp_path, store):
    """app.py model_uri=: the checkpoint the version was exported from (its training run's
    best.ckpt, checked by weights checksum); serve.py model_uri=: the version's ONNX export, as
    predict.py downloads it."""
    import hashlib

    from pneumonia.app.serve import checkpoint_path
    from pneumonia.export.runner import export
    from pneumonia.serve.server import from_registry
    from pneumonia.tracking.registry import RegistryError

    out, client, _, _ = tracked
    ckpt = out / "checkpoints" / "best.ckpt"
    meta = export(
        compose_cfg(
            "export",
            [
                f"ckpt_path={ckpt}",
                "register=pneumonia-app",
                "alias=champion",
                "verify=false",
                f"mlflow.tracking_uri={store[1]}",
            ],
            tmp_path / "export",
        )
    )
    uri = ["model_uri=models:/pneumonia-app@champion", f"mlflow.tracking_uri={store[1]}"]
    app_ckpt = checkpoint_path(compose_cfg("app", uri, tmp_path / "app"))
    assert open(app_ckpt, "rb").read() == ckpt.read_bytes()  # the calibrated best.ckpt, byte for byte
    served = from_registry(compose_cfg("serve", uri, tmp_path / "serve"))
    model = tmp_path / "serve" / "model"
    assert served.model_path.startswith(str(model)) and served.model_path.endswith("model.onnx")
    assert hashlib.sha256(open(served.model_path, "rb").read()).hexdigest() == meta["sha256"]
    from pneumonia.serve.settings import check_model_source

    assert check_model_source(served) == "onnx"

    client.delete_model_version_tag("pneumonia-app", str(meta["registered"]["version"]), "weights_digest")
    with pytest.raises(RegistryError, match="registered without its checkpoint's weights checksum") as err:
        checkpoint_path(compose_cfg("app", uri, tmp_path / "app2"))
    assert "\n" not in str(err.value) and f"ckpt_path={ckpt}" in str(err.value)


def cli(capsys, *args, uri):
    """`python -m pneumonia.tools.registry --tracking-uri URI args...`: (exit status, stdout, stderr)."""
    from pneumonia.tools.registry import main

    capsys.readouterr()
    status = main(["--tracking-uri", uri, *args])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.slow
def test_a_sweep_logs_one_run_per_job_under_a_parent(xray_root, tmp_path, monkeypatch):
    """train.py -m seed=1,2: Hydra's basic launcher runs both jobs in this process (as from a
    terminal, less the second import of torch and mlflow)."""
    import importlib.util

    from hydra.core.global_hydra import GlobalHydra

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "train.py",
            "-m",
            f"data.root={xray_root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            *TINY,
            "trainer.max_epochs=1",
            "seed=1,2",
            "logger=mlflow",
            f"mlflow.tracking_uri={uri}",
            "intervals.resamples=0",
            "mlflow.log_checkpoint=false",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
    )
    GlobalHydra.instance().clear()
    spec = importlib.util.spec_from_file_location("__main__", PROJECT_ROOT / "train.py")
    try:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))  # its `__main__` block: the command line
    finally:
        GlobalHydra.instance().clear()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("pneumonia")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "pneumonia.sweep_parent" in r.data.tags]
    jobs = [r for r in runs if r not in parents]
    assert len(parents) == 1 and len(jobs) == 2
    assert {r.data.params["seed"] for r in jobs} == {"1", "2"}
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parents[0].info.run_id}
    assert all(len(client.get_metric_history(r.info.run_id, "val/auroc")) == 1 for r in jobs)


@pytest.mark.parametrize(
    "config_name, overrides, message",
    [
        ("export", ["register=bad/name"], "must be a model name"),
        ("export", ["alias=champion"], "give register=<model name> with it"),
        ("export", ["register=pneumonia", "alias=latest"], "must be an alias"),
        ("predict", ["model_uri=pneumonia@champion"], "must be models:/<name>@<alias>"),
        ("serve", ["model_uri=pneumonia@champion"], "must be models:/<name>@<alias>"),
        ("serve", ["model_uri=models:/pneumonia@champion", "model_path=x.onnx"], "exactly one of them"),
        ("app", ["model_uri=pneumonia"], "must be models:/<name>@<alias>"),
        ("app", ["model_uri=models:/pneumonia@champion", "ckpt_path=x.ckpt"], "not both"),
        ("train", ["logger=mlflow", "mlflow.tracking_uri=5"], "mlflow.tracking_uri=5 must be a string"),
        ("train", ["mlflow.log_checkpoint=maybe"], "mlflow.log_checkpoint='maybe' must be true or false"),
    ],
)
def test_bad_settings_are_one_line_before_torch(config_name, overrides, message, xray_root, tmp_path):
    base = {"export": ["ckpt_path=x.ckpt"], "predict": ["inputs=x"], "train": [f"data.root={xray_root}"]}
    base.update(serve=[], app=[])
    problem = check_or_fail(config_name, compose_cfg(config_name, [*base[config_name], *overrides], tmp_path))
    assert problem and message in problem and "\n" not in problem


@pytest.mark.slow
def test_registry_errors_are_one_line(tracked, store, tmp_path, capsys):
    from pneumonia.runners.predict import predict

    _, client, _, _ = tracked
    client.create_registered_model("empty")
    for args, message in (
        (("list", "nope"), "no registered model 'nope'"),
        (("alias", "empty", "99", "champion"), "has no version 99"),
    ):
        status, _, err = cli(capsys, *args, uri=store[1])
        assert status == 2 and message in err and err.count("\n") == 1, err
    status, _, err = cli(capsys, "list", uri=f"sqlite:///{tmp_path / 'none.db'}")
    assert status == 2 and "no such store" in err and not (tmp_path / "none.db").exists()
    with pytest.raises(UserError, match="has no alias 'staging'"):
        predict(
            compose_cfg(
                "predict",
                ["inputs=x", "model_uri=models:/empty@staging", f"mlflow.tracking_uri={store[1]}"],
                tmp_path / "p",
            )
        )
