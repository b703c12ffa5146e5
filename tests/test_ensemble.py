"""Ensembles (`pneumonia.ensemble`, `pneumonia.models.Ensemble`): members trained by
`experiment=best_ensemble` (tiny), the ensemble checkpoint saved, loaded by the Predictor,
scored as the mean of its members, its threshold chosen on validation; eval.py, predict.py
(with Grad-CAM, the mean of the members' maps) and the ONNX export on it; the CLI and its
one-line refusals."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumonia.data.datamodule import ChestXrayDataModule
from pneumonia.tools.ensemble import main as ensemble_main
from pneumonia.ensemble.build import build_ensemble
from pneumonia.errors import UserError
from pneumonia.evaluation.metrics import report
from pneumonia.evaluation.threshold import choose_threshold
from pneumonia.explain.gradcam import gradcam
from pneumonia.inference import Predictor
from pneumonia.inference.checkpoint import ensemble_info, load_checkpoint
from pneumonia.inference.predictor import TemperatureScaled
from pneumonia.models import build_net
from pneumonia.models.ensemble import Ensemble, find_ensemble
from tests.helpers import PROJECT_ROOT, compose_cfg, run_cli, train_cfg

SEEDS = (1, 2)
RECIPE = (
    "experiment=best_ensemble",
    f"ensemble.seeds=[{','.join(map(str, SEEDS))}]",
    "trainer.max_epochs=2",
    "threshold.method=youden",  # the tiny members of other tests use youden: mixable with these
    "logger=none",
    "callbacks.gradcam=null",
    "intervals.resamples=200",
)
NET = {
    "_target_": "pneumonia.models.CustomCNN",
    "depth": 2,
    "widths": [4, 8],
    "in_channels": 1,
    "image_size": 32,
    "dense_units": 8,
    "dilated_blocks": [],
    "batch_norm": True,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


@pytest.fixture(scope="module")
def run(xray_root, tmp_path_factory) -> Path:
    """`python train.py experiment=best_ensemble` made tiny: 2 members of 2 epochs, then the ensemble."""
    from pneumonia.ensemble.train import train

    out = tmp_path_factory.mktemp("best_ensemble")
    score, rep = train(train_cfg(xray_root, out, *RECIPE))
    assert score == rep["auroc"]
    return out


def ckpt_of(run: Path) -> Path:
    return run / "checkpoints" / "best.ckpt"


def members_of(run: Path) -> list[Path]:
    return [run / "members" / f"seed{s}" / "checkpoints" / "best.ckpt" for s in SEEDS]


def scan_test_split(xray_root) -> list[Path]:
    return sorted(p for p in (xray_root / "test").rglob("*") if p.is_file())


def val_split(predictor: Predictor, xray_root: Path, cache: Path) -> ChestXrayDataModule:
    dm = ChestXrayDataModule(**{**predictor.data_settings, "root": str(xray_root), "cache_dir": str(cache)})
    dm.setup("fit")
    return dm


# ---- the network -------------------------------------------------------------------------
def test_ensemble_net_averages_probabilities_or_logits_with_member_temperatures():
    torch.manual_seed(0)
    spec = {"_target_": "pneumonia.models.Ensemble", "members": [NET, NET, NET], "temperatures": [1.0, 0.5, 2.0]}
    prob = build_net(spec).eval()
    logit = build_net({**spec, "combine": "logit"}).eval()
    logit.load_state_dict(prob.state_dict())
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        z = torch.stack([m(x) / t for m, t in zip(prob.members, (1.0, 0.5, 2.0))])
        assert prob(x).shape == (5,)
        assert torch.allclose(torch.sigmoid(prob(x)), torch.sigmoid(z).mean(0), atol=1e-6)
        assert torch.allclose(logit(x), z.mean(0), atol=1e-6)
    # saturated members: the log-domain mean stays finite and exact, under bf16 autocast too
    extreme = torch.tensor([[100.0, -100.0, 30.0], [100.0, -100.0, -30.0]])
    prob.member_logits = lambda x: extreme  # type: ignore[method-assign]
    assert torch.equal(prob(x), torch.tensor([100.0, -100.0, 0.0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert build_net(spec).eval()(x).dtype == torch.float32
    for bad, key in (
        ({**spec, "combine": "median"}, "model.combine"),
        ({**spec, "temperatures": [1.0]}, "model.temperatures"),
        ({**spec, "temperatures": [1.0, 0.0, 1.0]}, "model.temperatures"),
        ({**spec, "members": []}, "model.members"),
    ):
        with pytest.raises(Exception, match=key):
            build_net(bad)


# ---- experiment=best_ensemble: the checkpoint ------------------------------------------------
@pytest.mark.slow
def test_best_ensemble_trains_members_and_writes_one_calibrated_checkpoint(run):
    ckpt = load_checkpoint(ckpt_of(run))  # weights_only=True, like every loader
    net = ckpt["hyper_parameters"]["net"]
    assert net["_target_"] == "pneumonia.models.Ensemble" and net["combine"] == "prob"
    assert len(net["members"]) == 2 and net["temperatures"] == [1.0, 1.0]
    member_ckpts = [load_checkpoint(p) for p in members_of(run)]
    assert [m["hyper_parameters"]["seed"] for m in member_ckpts] == list(SEEDS)
    for i, m in enumerate(member_ckpts):  # the members' weights, unchanged
        for k, v in m["state_dict"].items():
            if k.startswith("net."):
                assert torch.equal(ckpt["state_dict"][f"net.members.{i}.{k[4:]}"], v)
    info = ensemble_info(ckpt)
    assert info["combine"] == "prob" and [m["seed"] for m in info["members"]] == list(SEEDS)
    cal, first = ckpt["pneumonia"], member_ckpts[0]
    assert cal["threshold_method"] == "youden" and cal["val_report"]["n"] == first["pneumonia"]["val_report"]["n"]
    assert float(ckpt["state_dict"]["threshold"]) == pytest.approx(cal["val_report"]["threshold"])
    assert ckpt["datamodule_hyper_parameters"]["split_seed"] == first["datamodule_hyper_parameters"]["split_seed"]
    val = json.loads((run / "val_metrics.json").read_text())
    assert val["at_threshold"]["threshold"] == pytest.approx(cal["val_report"]["threshold"])
    summary = json.loads((run / "ensemble.json").read_text())
    assert len(summary["members"]) == 2 and summary["val"]["auroc"] == val["at_threshold"]["auroc"]
    assert json.loads((run / "train_summary.json").read_text())["members"] == 2
    for s in SEEDS:  # each member folder reads like a run of its own (sweep_summary, rebuilding)
        assert (run / "members" / f"seed{s}" / ".hydra" / "overrides.yaml").read_text() == f"- seed={s}\n"
        assert (run / "members" / f"seed{s}" / "val_metrics.json").is_file()


def test_predictor_scores_the_mean_of_the_members_probabilities(run, xray_root):
    files = scan_test_split(xray_root)
    ens = Predictor.from_checkpoint(ckpt_of(run), precision="32-true")
    stored = load_checkpoint(ckpt_of(run))["pneumonia"]["val_report"]["threshold"]
    assert isinstance(ens.raw_net, Ensemble) and ens.threshold == pytest.approx(stored)
    members = [Predictor.from_checkpoint(p, precision="32-true") for p in members_of(run)]
    probs = ens.predict_files(files)
    assert torch.allclose(probs, torch.stack([m.predict_files(files) for m in members]).mean(0), atol=1e-6)


def test_threshold_is_chosen_on_the_validation_split_with_the_recipe_method(run, xray_root, tmp_path):
    ens = Predictor.from_checkpoint(ckpt_of(run))  # the precision the threshold was chosen under
    dm = val_split(ens, xray_root, tmp_path / "cache")
    val = dm.splits["val"]
    probs = ens.predict_images(val.images[val.indices])
    labels = val.labels[val.indices]
    stored = load_checkpoint(ckpt_of(run))["pneumonia"]["val_report"]
    assert choose_threshold(probs, labels, "youden", 0.5, 0.95) == pytest.approx(ens.threshold, abs=1e-6)
    got = report(probs, labels, ens.threshold)
    assert {k: got[k] for k in ("tn", "fp", "fn", "tp", "n")} == {k: stored[k] for k in ("tn", "fp", "fn", "tp", "n")}


@pytest.mark.slow
def test_eval_scores_the_ensemble_at_its_own_threshold(run, xray_root, tmp_path):
    from pneumonia.runners.eval import evaluate

    rep = evaluate(
        compose_cfg(
            "eval",
            [
                f"ckpt_path={ckpt_of(run)}",
                f"data.root={xray_root}",
                f"data.cache_dir={tmp_path / 'cache'}",
                "logger=none",
                "trainer.accelerator=cpu",
                "intervals.resamples=100",
                "gallery_size=0",
                "describe=false",
            ],
            tmp_path,
        )
    )
    ens = Predictor.from_checkpoint(ckpt_of(run))
    assert rep["threshold"] == pytest.approx(ens.threshold) and rep["n"] == 32 and rep["auroc"] > 0.8
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    probs = ens.predict_files([r["path"] for r in rows])
    assert max(abs(float(r["probability"]) - float(p)) for r, p in zip(rows, probs)) < 1e-5
    assert (tmp_path / "report.html").is_file()


def test_predict_with_heatmaps_on_files(run, xray_root, tmp_path):
    from pneumonia.runners.predict import predict

    summary = predict(
        compose_cfg(
            "predict",
            [f"ckpt_path={ckpt_of(run)}", f"inputs={xray_root / 'test'}", "device=cpu", "explain=true", "batch_size=8"],
            tmp_path,
        )
    )
    assert summary["n"] == 32 and summary["labelled"]["auroc"] > 0.8
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == 32


def test_gradcam_is_the_mean_of_the_members_maps_for_the_ensembles_decision(run, xray_root):
    ens = Predictor.from_checkpoint(ckpt_of(run), precision="32-true")
    files = scan_test_split(xray_root)[::4]
    x = ens.preprocess.to_input(torch.stack([torch.from_numpy(ens.preprocess.load(f)) for f in files]))
    maps, probs = gradcam(ens.net, x, threshold=ens.threshold)
    assert torch.allclose(probs, ens.predict_tensor(x), atol=1e-6)
    decisions = (probs >= ens.threshold).long()
    each = [gradcam(m, x, decisions=decisions)[0] for m in find_ensemble(ens.net).members]
    mean = torch.stack(each).mean(0)
    expected = mean / mean.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    assert maps.shape == (len(files), 48, 48) and torch.allclose(maps, expected, atol=1e-5)
    peaks = maps.amax(dim=(1, 2))  # scaled by its maximum; an all-zero map (no evidence) stays zero
    assert bool(((peaks - 1).abs() < 1e-6).logical_or(peaks == 0).all()) and bool((peaks == 1).any())
    # behind a temperature and inside the LightningModule: the same maps, the ensemble's probabilities
    hot = Predictor.from_checkpoint(ckpt_of(run), precision="32-true", temperature=2.0)
    assert isinstance(hot.net, TemperatureScaled)
    hot_maps, hot_probs = gradcam(hot.net, x, decisions=decisions)
    assert torch.allclose(hot_maps, maps, atol=1e-5) and torch.allclose(hot_probs, hot.predict_tensor(x), atol=1e-6)
    module_maps, _ = gradcam(ens.lightning_module(), x, threshold=ens.threshold)
    assert torch.allclose(module_maps, maps, atol=1e-5)
    tta = Predictor.from_checkpoint(ckpt_of(run), precision="32-true", tta=True)  # TTA(Ensemble): found below it
    tta_maps, tta_probs = gradcam(tta.net, x, decisions=decisions)
    assert torch.allclose(tta_maps, maps, atol=1e-5) and torch.allclose(tta_probs, tta.predict_tensor(x), atol=1e-6)
    with pytest.raises(ValueError, match="one layer per member"):
        gradcam(ens.net, x, layer=find_ensemble(ens.net).members[0].features[-1][-2])


def test_app_scores_the_ensemble_with_its_maps_and_names_its_members(run, xray_root):
    from pneumonia.app.service import Service

    service = Service.from_checkpoint(ckpt_of(run), device="cpu")
    files = scan_test_split(xray_root)[::8]
    results = service.score(files)
    ens = service.predictor
    assert all(r.ok for r in results)
    expected = ens.predict_files(files)
    assert torch.equal(torch.tensor([r.probability for r in results], dtype=torch.float32), expected)
    size = ens.preprocess.image_size
    assert all(r.cams.shape == (2, size, size) and np.isfinite(r.cams).all() for r in results)
    about = service.describe_model()
    assert f"an ensemble of {len(SEEDS)} networks" in about and about.count("CustomCNN: depth") == len(SEEDS)
    assert f"threshold: {ens.threshold:.4f}" in about


@pytest.mark.slow
def test_onnx_export_is_one_graph_with_dynamic_batch_and_parity(run, xray_root, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pneumonia.export.runner import export

    meta = export(compose_cfg("export", [f"ckpt_path={ckpt_of(run)}"], tmp_path))
    assert meta["verification"]["max_abs_probability_difference"] <= 1e-4
    assert meta["threshold"] == pytest.approx(Predictor.from_checkpoint(ckpt_of(run)).threshold)
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert len(model.graph.input) == 1 and len(model.graph.output) == 1
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, free batch dimension
    convs = sum(node.op_type == "Conv" for node in model.graph.node)
    from pneumonia.models.tta import TTA

    assert Predictor.from_checkpoint(ckpt_of(run)).tta  # experiment=best's recipe scores with TTA
    variants = len(TTA(torch.nn.Identity()).variants)  # 7: the graph runs the ensemble once per variant
    assert convs == 2 * 6 * variants  # both members' 3 blocks of 2 convs, in one graph
    from pneumonia.export.onnx_predictor import OnnxPredictor

    files = scan_test_split(xray_root)  # real files: probabilities away from 0 and 1, batches of 7 and a rest
    onnx_probs = OnnxPredictor.from_model(tmp_path / "model.onnx").predict_files(files, batch_size=7)
    eager = Predictor.from_checkpoint(ckpt_of(run), precision="32-true").predict_files(files)
    assert abs(torch.as_tensor(onnx_probs) - eager).max() <= 1e-4


# ---- building from checkpoints: temperatures, the CLI, refusals -------------------------------
def with_changes(
    src: Path, dst: Path, data: dict | None = None, calibration: dict | None = None, drop_calibration: bool = False
) -> Path:
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["datamodule_hyper_parameters"].update(data or {})
    ckpt["pneumonia"].update(calibration or {})
    if drop_calibration:
        ckpt.pop("pneumonia")
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst)
    return dst


def test_three_members_with_a_stored_temperature_fold_it_in(run, tiny_checkpoint, tmp_path):
    # without TTA (with it, a member's temperature scales its TTA-averaged logit, the ensemble's
    # each variant's logit: close, not equal; docs/training.md "Ensembles"), and with one preprocessing
    plain = {"tta": False, "normalize": "none", "crop": "none"}
    hot = with_changes(members_of(run)[0], tmp_path / "hot.ckpt", data=plain, calibration={"temperature": 2.0})
    second = with_changes(members_of(run)[1], tmp_path / "second.ckpt", data=plain)
    members = [hot, second, tiny_checkpoint]  # another recipe on the same split: a fine member
    with pytest.raises(UserError, match="disagree on calibration.temperature"):  # T fitted for hot.ckpt only
        build_ensemble(members, tmp_path / "three", cache_dir=str(tmp_path / "cache"))
    summary = build_ensemble(
        members, tmp_path / "three", cache_dir=str(tmp_path / "cache"), calibration={"temperature": False}
    )
    ckpt = load_checkpoint(summary["checkpoint"])
    assert ckpt["hyper_parameters"]["net"]["temperatures"] == [2.0, 1.0, 1.0]
    x = torch.rand(6, 1, 48, 48)
    ens = Predictor.from_checkpoint(summary["checkpoint"], precision="32-true").predict_tensor(x)
    each = [Predictor.from_checkpoint(p, precision="32-true").predict_tensor(x) for p in members]
    assert torch.allclose(ens, torch.stack(each).mean(0), atol=1e-6)
    assert math.isclose(summary["val"]["threshold"], float(ckpt["state_dict"]["threshold"]), abs_tol=1e-7)


@pytest.mark.slow
def test_cli_builds_a_logit_ensemble_from_the_members_folder(run, tmp_path):
    out = tmp_path / "logit"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumonia.tools.ensemble",
            str(run / "members"),
            "--combine",
            "logit",
            "--out",
            str(out),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"python eval.py ckpt_path={out / 'checkpoints' / 'best.ckpt'}" in res.stdout
    assert "ensemble (logit)" in res.stdout and "seed1" in res.stdout
    x = torch.rand(4, 1, 48, 48)
    ens = Predictor.from_checkpoint(out / "checkpoints" / "best.ckpt", precision="32-true")
    assert ens.raw_net.combine == "logit"
    logits = torch.stack([Predictor.from_checkpoint(p, precision="32-true").logits(x) for p in members_of(run)])
    assert torch.allclose(ens.logits(x), logits.mean(0), atol=1e-5)
    assert json.loads((out / "val_metrics.json").read_text())["threshold_method"] == "youden"


def cli_error(capsys, *args: str) -> str:
    assert ensemble_main([*map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_members_are_refused_in_one_line(run, tmp_path, capsys):
    one, two = members_of(run)
    assert "at least 2 members; 1 found" in cli_error(capsys, one)
    assert "does not exist" in cli_error(capsys, one, tmp_path / "nope")
    assert "named twice" in cli_error(capsys, one, one)
    split = with_changes(two, tmp_path / "split.ckpt", data={"split_seed": 7})
    err = cli_error(capsys, one, split)
    assert "data.split_seed" in err and "validation splits differ" in err
    size = with_changes(two, tmp_path / "size.ckpt", data={"image_size": 64})
    assert "data.image_size" in cli_error(capsys, one, size)
    assert "data.root" in cli_error(capsys, one, with_changes(two, tmp_path / "root.ckpt", data={"root": "/else"}))
    norm = with_changes(two, tmp_path / "norm.ckpt", data={"normalize": "imagenet"})
    assert f"data.normalize: {load_checkpoint(one)['datamodule_hyper_parameters']['normalize']!r}" in cli_error(
        capsys, one, norm
    )
    assert "data.tta" in cli_error(capsys, one, with_changes(two, tmp_path / "tta.ckpt", data={"tta": False}))
    f1 = with_changes(two, tmp_path / "f1.ckpt", calibration={"threshold_method": "max_f1"})
    assert "disagree on threshold.method: 'youden'" in cli_error(capsys, one, f1)  # --threshold-method chooses
    raw = with_changes(two, tmp_path / "raw.ckpt", drop_calibration=True)
    assert "no threshold chosen on validation" in cli_error(capsys, one, raw)
    assert "is itself an ensemble" in cli_error(capsys, one, ckpt_of(run))
    sweep = tmp_path / "sweep"  # a multirun folder with an unfinished job
    shutil.copytree(one.parent.parent, sweep / "0_seed=1")
    (sweep / "1_seed=2" / ".hydra").mkdir(parents=True)
    assert "1_seed=2" in cli_error(capsys, sweep)
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    assert "not a readable checkpoint" in cli_error(capsys, one, tmp_path / "junk.ckpt")
    assert "already exists" in cli_error(capsys, one, two, "--out", ckpt_of(run))
    # another data root holding other images: the validation split would not be the members'
    other = tmp_path / "other_data"
    from pneumonia.data.synthetic import make_chest_xray_tree

    make_chest_xray_tree(other, {"train": (40, 40)}, seed=1)
    assert "calibrated on" in cli_error(
        capsys, one, two, "--data-root", other, "--out", tmp_path / "o", "--cache-dir", tmp_path / "cache"
    )
    assert not (tmp_path / "o").exists()  # a refused build leaves no empty run folder


@pytest.mark.slow
def test_train_py_dispatches_and_checks_the_ensemble_settings(xray_root, tmp_path):
    res = run_cli(
        "train.py",
        "experiment=best_ensemble",
        "ensemble.seeds=[1]",
        f"data.root={xray_root}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: ensemble.seeds=[1]")


def test_resume_keeps_finished_members_and_builds_again(run, xray_root, tmp_path):
    from pneumonia.ensemble.train import train

    copy = tmp_path / "run"
    shutil.copytree(run / "members", copy / "members")
    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("best.ckpt")}
    score, _ = train(train_cfg(xray_root, copy, *RECIPE, f"resume={copy}"))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # not trained again
    assert load_checkpoint(ckpt_of(copy))["pneumonia"]["val_report"]["auroc"] == pytest.approx(score)
    assert float(load_checkpoint(ckpt_of(copy))["state_dict"]["threshold"]) == pytest.approx(
        float(load_checkpoint(ckpt_of(run))["state_dict"]["threshold"]), abs=1e-6
    )
