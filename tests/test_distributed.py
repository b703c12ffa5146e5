"""More than one process: DDP on 2 CPU processes, and sweeps through submitit."""

import json

import pytest

from pneumonia.evaluation import METRIC_NAMES, REPORT_KEYS
from tests.helpers import run_cli


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_once_and_score_like_one(xray_root, tmp_path):
    common = [
        f"data.root={xray_root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "debug=tiny",
        "data.val_fraction=0.25",
        "trainer.max_epochs=2",
        "callbacks.progress_bar=null",
    ]
    run = tmp_path / "ddp"
    res = run_cli("train.py", *common, "trainer=ddp_cpu", f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) >= 1
    assert not list(tmp_path.glob("outputs"))  # no second run folder from rank 1
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["val"]["n"] > 0
    # the same checkpoint scored by 1 and by 2 processes: identical test metrics, every image once
    metrics = []
    for name, extra in (("one", []), ("two", ["trainer=ddp_cpu"])):
        out = tmp_path / f"eval_{name}"
        res = run_cli(
            "eval.py",
            f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
            f"data.root={xray_root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.eval_batch_size=5",
            *extra,
            f"hydra.run.dir={out}",
        )
        assert res.returncode == 0, res.stderr[-3000:]
        metrics.append(json.loads((out / "metrics.json").read_text()))
        with open(out / "predictions.csv") as f:
            assert len(f.readlines()) == 1 + 32
    points = [{k: m[k] for k in REPORT_KEYS} for m in metrics]  # metrics.json also holds nested sections
    assert points[0] == pytest.approx(points[1], abs=1e-6)
    for name in METRIC_NAMES:  # and the same bootstrap intervals
        assert metrics[0]["ci95"][name] == pytest.approx(metrics[1]["ci95"][name], abs=1e-6)
    assert metrics[1]["n"] == 32


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep(xray_root, tmp_path):
    res = run_cli(
        "train.py",
        "-m",
        "launcher=submitit_local",
        f"data.root={xray_root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "debug=tiny",
        "trainer.max_epochs=1",
        "model.depth=2,3",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name[0].isdigit()]
    assert len(jobs) == 2
    assert all((job / "checkpoints" / "best.ckpt").is_file() for job in jobs)
