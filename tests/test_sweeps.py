"""Grid and Optuna sweeps on synthetic data, and the sweep summary."""

import csv
import json

import pytest

from pneumonia.tools.sweep_summary import main as sweep_summary
from tests.test_train_eval import run_cli


@pytest.mark.slow
def test_optuna_two_trials_and_summary(xray_root, tmp_path):
    sweep = tmp_path / "optuna"
    res = run_cli(
        "train.py",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        f"data.root={xray_root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "debug=tiny",
        "data.image_size=96",
        "model.widths=[8,8,16,16,16]",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Best parameters" in res.stdout + res.stderr
    rows = sweep_summary([str(sweep)])
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert rows[0]["best"] >= rows[1]["best"]  # val/auroc, best first
    assert "optimizer.lr=" in rows[0]["overrides"]
    with open(sweep / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


@pytest.mark.slow
def test_grid_summary_lists_unfinished_jobs_last(xray_root, tmp_path):
    sweep = tmp_path / "grid"
    res = run_cli(
        "train.py",
        "-m",
        f"data.root={xray_root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "debug=tiny",
        "trainer.max_epochs=1",
        "optimizer.lr=0.001,0.003",
        f"hydra.sweep.dir={sweep}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep / "9_broken" / ".hydra").mkdir(parents=True)
    rows = sweep_summary([str(sweep)])
    assert [r["status"] for r in rows] == ["ok", "ok", "unfinished"]
    assert {r["overrides"].split()[-1] for r in rows[:2]} == {"optimizer.lr=0.001", "optimizer.lr=0.003"}
    assert (sweep / "summary.md").read_text().count("\n") == 5


def fake_job(folder, name, overrides, best, minutes, monitor="val/auroc", mode="max"):
    job = folder / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / ".hydra" / "config.yaml").write_text(f"monitor_mode: {mode}\n")
    (job / "train_summary.json").write_text(
        json.dumps(
            {
                "monitor": monitor,
                "best_score": best,
                "epochs": 3,
                "train_minutes": minutes,
                "val": {"auroc": best, "accuracy": best - 0.1},
            }
        )
    )


def test_over_seeds_groups_jobs_that_differ_only_in_seed(tmp_path, capsys):
    for i, (lr, seed, best, minutes) in enumerate([(0.1, 1, 0.90, 2.0), (0.1, 2, 0.94, 4.0), (0.2, 1, 0.80, 1.0)]):
        fake_job(tmp_path, f"{i}_job", [f"optimizer.lr={lr}", f"seed={seed}"], best, minutes)
    fake_job(tmp_path, "3_job", ["optimizer.lr=0.3", "seed=1"], 0.2, 1.0, monitor="val/loss", mode="min")
    fake_job(tmp_path, "4_job", ["optimizer.lr=0.3", "seed=2"], 0.1, 1.0, monitor="val/loss", mode="min")
    rows = sweep_summary([str(tmp_path), "--over-seeds"])
    assert [r["job"] for r in rows] == ["1_job", "0_job", "2_job", "4_job", "3_job"]  # best first per monitor
    with open(tmp_path / "seeds.csv") as f:
        groups = {g["overrides"]: g for g in csv.DictReader(f)}
    lr1 = groups["optimizer.lr=0.1"]
    assert lr1["n"] == "2" and lr1["seeds"] == "1 2"  # in seed order, whatever the job order
    assert float(lr1["val_auroc_mean"]) == pytest.approx(0.92)
    assert float(lr1["val_auroc_std"]) == pytest.approx(0.02828, abs=1e-4)
    assert float(lr1["train_minutes_mean"]) == pytest.approx(3.0)
    assert groups["optimizer.lr=0.2"]["n"] == "1" and groups["optimizer.lr=0.2"]["val_auroc_std"] == ""
    out = capsys.readouterr().out
    assert "0.9200 ± 0.0283" in out and "0.8000 (1 seed)" in out
