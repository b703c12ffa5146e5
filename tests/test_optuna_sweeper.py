"""The project's Optuna sweeper (src/hydra_plugins/pneumonia_optuna): the search-space syntax,
the samplers and pruners, pruning by the jobs, workers sharing one study (SQLite and a real
PostgreSQL server), a dead worker's trial failed and run again, one-line errors."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import pytest

from pneumonia.network import free_port
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.pneumonia_optuna import _impl
from pneumonia.config.compose import compose
from pneumonia.runners import trial as job_trial
from pneumonia.tools.sweep_summary import main as sweep_summary
from tests.helpers import PROJECT_ROOT, run_cli

# a small, fast job: tiny CNN, no logger, no Grad-CAM images, one epoch unless told otherwise
FAST = [
    "debug=tiny",
    "data.image_size=96",
    "model.widths=[8,8,16,16,16]",
    "logger=none",
    "callbacks.gradcam=null",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.max_epochs=1",
    "threads=1",
]


def sweep_args(xray_root, cache, sweep_dir, *extra):
    return [
        "-m",
        "hparams_search=optuna",
        f"data.root={xray_root}",
        f"data.cache_dir={cache}",
        *FAST,
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
    ]


def start_worker(*args):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def job_trials(sweep_dir):
    """{trial number: job folder} of a sweep, from each job's overrides."""
    import yaml

    found = {}
    for job in Path(sweep_dir).iterdir():
        overrides = job / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            for o in yaml.safe_load(overrides.read_text()):
                if o.startswith("optuna.trial="):
                    found[int(o.split("=", 1)[1])] = job
    return found


# --- the search space ---


def test_search_space_syntax_and_overrides_read_back():
    space, fixed = _impl.search_space(
        [
            "a=choice(32, 64)",
            "b=tag(log, interval(0.0001, 0.003))",
            "c=interval(1, 5)",
            "d=range(1, 7, 2)",
            "e=range(0.1, 0.35, 0.1)",
            "f=choice(adam, 'with space', true)",
            "g=plain",
            "c=3",
        ]
    )
    assert space["a"] == CategoricalDistribution([32, 64])
    assert space["b"] == FloatDistribution(0.0001, 0.003, log=True)
    assert space["d"] == IntDistribution(1, 5, step=2)  # Hydra's range: the stop is excluded
    assert space["e"].low == pytest.approx(0.1) and space["e"].high == pytest.approx(0.3) and space["e"].step == 0.1
    assert "c" not in space and fixed == {"g": "plain", "c": "3"}  # a later plain value wins
    assert _impl.grid_values("d", space["d"]) == [1, 3, 5]
    assert len(_impl.grid_values("e", space["e"])) == 3
    with pytest.raises(_impl.SweepError, match="b is an interval"):
        _impl.grid_values("b", space["b"])
    # every value a trial may get reads back as the same value and type
    parser = OverridesParser.create()
    for value in (32, 0.000123, 1e-05, True, None, "adam", "with space", "1.5", "true", "a=b,c", "sqlite:////x/o.db"):
        line = _impl.override("k", value)
        assert parser.parse_override(line).value() == value, line
    for bad in (["x=interval(5, 1)"], ["x=tag(log, interval(0, 1))"], ["x=choice(1,"]):
        with pytest.raises(_impl.SweepError):
            _impl.search_space(bad)


def test_samplers_and_pruners_compose_and_build(xray_root, tmp_path):
    expected = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "grid": optuna.samplers.GridSampler,
    }
    for name, cls in expected.items():
        cfg = compose(
            "train",
            [f"data.root={xray_root}", "hparams_search=optuna", f"hydra/sweeper/sampler={name}"],
            tmp_path,
            hydra_config=True,
        )
        sweeper = cfg.hydra.sweeper
        assert sweeper.sampler.seed == 1234 and sweeper.direction == "maximize" and sweeper.storage is None
        extra = {"search_space": {"x": [1, 2]}} if name == "grid" else {}
        assert isinstance(_impl.build("sampler", sweeper.sampler, **extra), cls)
    pruners = {
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    for name, cls in pruners.items():
        cfg = compose(
            "train",
            [f"data.root={xray_root}", "hparams_search=optuna", f"hydra/sweeper/pruner={name}"],
            tmp_path,
            hydra_config=True,
        )
        assert isinstance(_impl.build("pruner", cfg.hydra.sweeper.pruner), cls)
        # the job rebuilds the same pruner from what the sweeper stores with its trial
        from omegaconf import OmegaConf

        assert isinstance(job_trial.build_pruner(OmegaConf.to_container(cfg.hydra.sweeper.pruner)), cls)
    assert job_trial.PRUNER_ATTR == _impl.PRUNER_ATTR
    with pytest.raises(Exception, match="not a class of optuna.pruners"):
        job_trial.build_pruner({"_target_": "os.system", "command": "true"})  # the database names no code to run


# --- pruning ---


@pytest.mark.slow  # whole sweeps in subprocesses: seconds each
def test_pruned_jobs_stop_keep_their_values_and_are_listed(xray_root, tmp_path):
    sweep = tmp_path / "pruned"
    res = run_cli(
        "train.py",
        *sweep_args(
            xray_root,
            tmp_path / "cache",
            sweep,
            "hydra.sweeper.n_trials=2",
            "trainer.max_epochs=4",
            "callbacks.early_stopping=null",
            "hydra/sweeper/pruner=threshold",
            "hydra.sweeper.pruner.lower=1.01",
            "hydra.sweeper.pruner.n_warmup_steps=2",
        ),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="pneumonia", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    for t in study.trials:  # one report per epoch (from 1) up to the pruned one; its value is the last report
        assert sorted(t.intermediate_values) == [1, 2] and t.value == t.intermediate_values[2]
    rows = sweep_summary([str(sweep)])
    assert [r["status"] for r in rows] == ["pruned at epoch 2"] * 2
    assert all(r["epochs"] == 2 and r["val_auroc"] is not None for r in rows)  # stopped cleanly, calibrated
    assert all("optuna." not in r["overrides"] and "optimizer.lr=" in r["overrides"] for r in rows)
    for job in job_trials(sweep).values():
        assert "optuna" not in job.name and (job / "checkpoints" / "best.ckpt").is_file()
    assert "Trials in the study: 2 pruned" in res.stdout + res.stderr


@pytest.mark.slow  # whole sweeps in subprocesses: seconds each
def test_ddp_ranks_train_the_same_trial_and_prune_together(xray_root, tmp_path):
    """Lightning starts rank 1 by running the command line again: in a sweep that would be a
    sweep of its own (another trial, other parameters). Both ranks train trial 0, rank 1 stops
    with rank 0 at the pruned epoch, and the study holds one trial."""
    sweep = tmp_path / "ddp"
    res = run_cli(
        "train.py",
        *sweep_args(
            xray_root,
            tmp_path / "cache",
            sweep,
            "hydra.sweeper.n_trials=1",
            "trainer=ddp_cpu",
            "data.val_fraction=0.25",
            "trainer.max_epochs=3",
            "callbacks.early_stopping=null",
            "hydra/sweeper/pruner=threshold",
            "hydra.sweeper.pruner.lower=1.01",
            "hydra.sweeper.pruner.n_warmup_steps=2",
        ),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    trials = optuna.load_study(study_name="pneumonia", storage=f"sqlite:///{sweep / 'optuna.db'}").trials
    assert len(trials) == 1 and trials[0].state == TrialState.PRUNED and sorted(trials[0].intermediate_values) == [1, 2]
    (job,) = job_trials(sweep).values()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [job.name]  # rank 1 made no folder of its own
    rank1 = (job / "train_ddp_process_1.log").read_text()
    assert "GLOBAL_RANK: 1" in rank1 and "at epoch 2" in rank1 and "optuna.trial=0)" in rank1


@pytest.mark.slow  # whole sweeps in subprocesses: seconds each
def test_grid_runs_every_point_and_a_refused_one_fails_its_trial_only(xray_root, tmp_path):
    """The grid sampler tries each point once; a point the config refuses (4 blocks with 3
    widths) fails its own trial, and with max_failure_rate=1 the search goes on."""
    sweep = tmp_path / "grid"
    res = run_cli(
        "train.py",
        *sweep_args(
            xray_root,
            tmp_path / "cache",
            sweep,
            "hydra.sweeper.params=null",
            "model.widths=[8,16,32]",
            "model.depth=choice(4,3)",
            "hydra/sweeper/sampler=grid",
            "hydra.sweeper.n_trials=5",
            "hydra.sweeper.max_failure_rate=1",
        ),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "error: model.depth=4 needs 1..3" in res.stderr
    trials = optuna.load_study(study_name="pneumonia", storage=f"sqlite:///{sweep / 'optuna.db'}").trials
    assert sorted((t.params["model.depth"], t.state) for t in trials) == [
        (3, TrialState.COMPLETE),
        (4, TrialState.FAIL),
    ]


# --- workers sharing one study ---


def two_workers(xray_root, tmp_path, storage):
    workers = [
        start_worker(
            *sweep_args(
                xray_root,
                tmp_path / f"cache{i}",
                tmp_path / f"w{i}",
                f"hydra.sweeper.storage={storage}",
                "hydra.sweeper.n_trials=2",
                "hydra/sweeper/pruner=none",
                "hydra.sweeper.study_name=shared",
            )
        )
        for i in (0, 1)
    ]
    for w in workers:
        finish(w)
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    ran = [set(job_trials(tmp_path / f"w{i}")) for i in (0, 1)]
    assert ran[0].isdisjoint(ran[1]) and ran[0] | ran[1] == {0, 1, 2, 3}  # no trial twice, none lost
    for i in (0, 1):
        for number, job in job_trials(tmp_path / f"w{i}").items():
            import json

            best = json.loads((job / "train_summary.json").read_text())["best_score"]
            assert study.trials[number].value == pytest.approx(best)  # each job's value told to its own trial


@pytest.mark.slow  # whole sweeps in subprocesses: seconds each
def test_two_workers_share_one_sqlite_study(xray_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    two_workers(xray_root, tmp_path, url)
    # a third worker told to fill the study up to 5 trials runs one, whatever its n_trials
    finish(
        start_worker(
            *sweep_args(
                xray_root,
                tmp_path / "cache0",
                tmp_path / "w2",
                f"hydra.sweeper.storage={url}",
                "hydra.sweeper.n_trials=4",
                "hydra.sweeper.total_trials=5",
                "hydra/sweeper/pruner=none",
                "hydra.sweeper.study_name=shared",
            )
        )
    )
    assert set(job_trials(tmp_path / "w2")) == {4}
    assert len(optuna.load_study(study_name="shared", storage=url).trials) == 5


@pytest.mark.slow  # whole sweeps in subprocesses: seconds each
def test_a_dead_workers_trial_is_failed_and_run_again(xray_root, tmp_path):
    """A worker that died leaves a running trial whose heartbeat stops: the next worker fails
    it and runs its parameters again (Optuna's heartbeat and RetryHeartbeatStaleTrialCallback)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = _impl.open_storage(url, heartbeat_interval=1, grace_period=1, max_retry=1)
    study = optuna.create_study(study_name="pneumonia", storage=storage, direction="maximize")
    with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize"
        warnings.simplefilter("ignore")
        dead = study.ask({"optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True)})
    storage.record_heartbeat(dead._trial_id)  # then nothing: the worker is gone
    time.sleep(2.5)
    sweep = tmp_path / "next"
    res = run_cli(
        "train.py",
        *sweep_args(
            xray_root,
            tmp_path / "cache",
            sweep,
            f"hydra.sweeper.storage={url}",
            "hydra.sweeper.n_trials=1",
            "hydra.sweeper.heartbeat_interval=1",
            "hydra.sweeper.grace_period=1",
        ),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    trials = optuna.load_study(study_name="pneumonia", storage=url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params["optimizer.lr"] == dead.params["optimizer.lr"]  # the same parameters, run again
    assert trials[1].system_attrs.get("failed_trial") == 0


@pytest.fixture
def postgres():
    """A PostgreSQL server of this test's own (initdb + pg_ctl in a temp folder, as the
    `postgres` user when the tests run as root); its URL."""
    # Debian's postgresql package keeps them in /usr/lib/postgresql/<version>/bin, off the PATH
    path = os.pathsep.join([os.environ.get("PATH", ""), *sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin")))])
    initdb, pg_ctl = shutil.which("initdb", path=path), shutil.which("pg_ctl", path=path)
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not on the PATH (Debian: apt-get install postgresql)")
    pytest.importorskip(
        "psycopg", reason='the PostgreSQL driver psycopg is not installed (pip install "psycopg[binary]")'
    )
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port("127.0.0.1")
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "optuna"], check=True, capture_output=True)
    subprocess.run(
        [
            *prefix,
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(folder / "log"),
            "-w",
            "-o",
            f"-p {port} -k {folder} -h 127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://optuna@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # whole sweeps in subprocesses: seconds each
def test_two_workers_share_one_postgresql_study(xray_root, tmp_path, postgres):
    two_workers(xray_root, tmp_path, postgres)


# --- one-line errors ---


@pytest.mark.slow
def test_bad_settings_are_one_line_errors(xray_root, tmp_path):
    # through the command line: the sweeper's refusal is one line, before any job
    res = run_cli(
        "train.py", *sweep_args(xray_root, tmp_path / "cache", tmp_path / "bad", "hydra.sweeper.storage=nowhere")
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and lines[-1].startswith("error: hydra.sweeper.storage='nowhere' is not a database URL")
    assert "Traceback" not in res.stderr
    res = run_cli("train.py", f"data.root={xray_root}", "optuna.trial=-1")  # the job's keys, before torch
    assert res.returncode == 2 and "optuna.trial=-1 must be a trial number" in res.stderr
    # the same checks, called directly
    with pytest.raises(_impl.SweepError, match="cannot open the study database"):
        _impl.open_storage("postgresql://u@127.0.0.1:1/db", heartbeat_interval=None, grace_period=None, max_retry=0)
    with pytest.raises(_impl.SweepError, match="reduction_factor=1 must be an integer >= 2"):
        _impl.check_pruner({"_target_": "optuna.pruners.HyperbandPruner", "reduction_factor": 1})
    with pytest.raises(_impl.SweepError, match="is not an importable class"):
        _impl.build("sampler", {"_target_": "optuna.samplers.NoSuchSampler"})
    url = f"sqlite:///{tmp_path / 'none.db'}"
    optuna.create_study(study_name="pneumonia", storage=url)
    with pytest.raises(job_trial.ConfigError, match="optuna.trial=3 of optuna.study=pneumonia: no such study or trial"):
        job_trial.open_trial(url, "pneumonia", 3)
