"""Grid and Optuna sweeps on synthetic data, and the sweep summary."""

import csv

from pneumonia.sweep_summary import main as sweep_summary
from tests.test_train_eval import run_cli


def test_optuna_two_trials_and_summary(xray_root, tmp_path):
    sweep = tmp_path / "optuna"
    res = run_cli("train.py", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", f"data.root={xray_root}",
                  f"data.cache_dir={tmp_path / 'cache'}", "debug=tiny", "data.image_size=96",
                  "model.widths=[8,8,16,16,16]", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Best parameters" in res.stdout + res.stderr
    rows = sweep_summary([str(sweep)])
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert rows[0]["best"] >= rows[1]["best"]  # val/auroc, best first
    assert "optimizer.lr=" in rows[0]["overrides"]
    with open(sweep / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_grid_summary_lists_failed_jobs_last(xray_root, tmp_path):
    sweep = tmp_path / "grid"
    res = run_cli("train.py", "-m", f"data.root={xray_root}", f"data.cache_dir={tmp_path / 'cache'}", "debug=tiny",
                  "trainer.max_epochs=1", "optimizer.lr=0.001,0.003", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep / "9_broken" / ".hydra").mkdir(parents=True)
    rows = sweep_summary([str(sweep)])
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert {r["overrides"].split()[-1] for r in rows[:2]} == {"optimizer.lr=0.001", "optimizer.lr=0.003"}
    assert (sweep / "summary.md").read_text().count("\n") == 5
