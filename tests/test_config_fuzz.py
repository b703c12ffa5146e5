"""Config fuzz: every leaf of every entry point's config, given the wrong values users type.

Each mutated config goes through the entry point's real code (the script's `main`, then
`pneumonia.config.entry.run` and its runner) up to the first image decode (train, eval), the first file decode
(predict) or the export itself (export), where a sentinel stops it. A mutation must end in
one `error: ...` line that names the key, with exit status 2, or reach the sentinel and be
listed in `ACCEPTED` below with the reason it is valid (or deliberately left unchecked).
A new config key that accepts a wrong value fails this test until it is checked or listed.
Command-line typos (an unknown group option or key) are tested at the end, through the scripts.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import io
import time
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf, open_dict

from pneumonia.config.compose import compose
from tests.helpers import PROJECT_ROOT, run_cli

MISSING_PATH = "/no/such/folder/x"
SECONDS = 5.0  # each check must answer within this (no decoding, no training)

# (key pattern, mutation or "*") -> why a value that passes the checks is right to pass.
# Mutations are written as repr() of the value: "'abc'", "-1", "0", "0.0", "2.5", "'maybe'", ...
ACCEPTED: dict[tuple[str, str], str] = {
    # names and free text
    ("task_name", "*"): "any text names the output folder",
    ("export:data_root", "'abc'"): "a folder path, read only by quantize=int8 (which says when it is missing)",
    ("callbacks.*.filename", "*"): "a checkpoint file name under its dirpath (Lightning's format string)",
    ("*.dirpath", "'nope'"): "a folder, created when the run starts",
    ("*.dirpath", "'/no/such/folder/x'"): "a folder, created when the run starts",
    ("*default_root_dir", "*"): "a folder, created when the run starts (or a file: Lightning writes nothing there)",
    ("paths.output_dir", "'nope'"): "a folder, created when the run starts",
    ("paths.output_dir", "'/no/such/folder/x'"): "a folder, created when the run starts",
    ("data.cache_dir", "'abc'"): "a folder, created when the cache is written",
    ("data.cache_dir", "'nope'"): "a folder, created when the cache is written",
    ("data.cache_dir", "'/no/such/folder/x'"): "a folder, created when the cache is written",
    ("data.bad_image_report", "*"): "set by the runners (the run folder's bad_images.tsv); not a user setting",
    # zero is a meaningful value
    ("*seed", "0"): "seeds may be 0",
    ("intervals.resamples", "0"): "0 = no bootstrap intervals",
    ("data.min_val_images", "0"): "0 = no minimum size of the validation split",
    ("data.num_workers", "0"): "0 = load in the main process (the default)",
    ("data.augment.*", "0.0"): "0 = that augmentation off",
    ("data.augment.shear", "2.5"): "degrees",
    ("data.augment.rotation", "2.5"): "degrees",
    ("data.stress.perturbations.gamma_*", "2.5"): "a gamma: any positive value",
    ("data.stress.perturbations.contrast_*", "2.5"): "a contrast factor: any value >= 0",
    (
        "data.stress.perturbations.contrast_*",
        "0.0",
    ): "a contrast factor of 0 (every image its flat mean): extreme, defined",
    ("data.stress.perturbations.blur", "2.5"): "a blur sigma in pixels: any positive value",
    ("data.augment.mixup", "2.5"): "mixup's Beta(alpha, alpha): any alpha > 0",
    ("model.dropout", "0.0"): "no dropout",
    ("model.dilated_blocks", "[]"): "no dilated block",
    ("module.label_smoothing", "0.0"): "0 = hard labels",
    ("threshold.value", "0.0"): "every image PNEUMONIA: a valid (if extreme) fixed threshold",
    ("optimizer.lr", "0.0"): "a frozen network; allowed for checks of the pipeline",
    ("optimizer.lr", "2.5"): "large learning rates are the user's choice",
    ("optimizer.weight_decay", "*"): "torch checks the sign; any non-negative value is valid",
    ("gallery_size", "0"): "0 = no gallery",
    ("print_rows", "0"): "0 = print no rows",
    ("callbacks.gradcam.num_images", "0"): "0 = no Grad-CAM images",
    ("callbacks.model_checkpoint.save_top_k", "*"): "-1 = keep all, 0 = keep none (Lightning's meanings)",
    ("callbacks.last_checkpoint.save_top_k", "*"): "-1 = keep all, 0 = keep none (Lightning's meanings)",
    ("callbacks.last_checkpoint.every_n_epochs", "0"): "0 = never (Lightning's meaning)",
    (
        "callbacks.early_stopping.patience",
        "*",
    ): "Lightning's EarlyStopping takes any integer (<= 0: stop at the first non-improvement)",
    (
        "callbacks.early_stopping.min_delta",
        "*",
    ): "Lightning's EarlyStopping takes any number (it uses the absolute value)",
    ("callbacks.progress_bar.refresh_rate", "*"): "0 disables the bar; Lightning takes any integer",
    ("callbacks.swa.swa_lrs", "2.5"): "a learning rate: any positive value",
    (
        "callbacks.swa.annealing_epochs",
        "0",
    ): "no annealing: the SWA learning rate from the first SWA epoch (torch's SWALR)",
    # left to torch and Lightning on purpose
    ("scheduler.scheduler.*", "*"): "torch's schedulers check what they rely on (factor < 1, mode); the rest "
    "(patience, min_lr, negative factor) only changes when the LR drops",
    ("trainer.min_epochs", "*"): "Lightning takes any integer (<= 0: no minimum)",
    ("trainer.log_every_n_steps", "*"): "Lightning takes any integer (<= 0: log each epoch only)",
    ("trainer.num_sanity_val_steps", "*"): "-1 = the whole validation split, 0 = none (Lightning's meanings)",
    ("trainer.max_epochs", "-1"): "no limit: allowed with early stopping (refused without it)",
    ("trainer.fast_dev_run", "2"): "n batches of each step (Lightning's meaning)",
    ("trainer.overfit_batches", "0.0"): "0 = off",
    ("trainer.gradient_clip_val", "0.0"): "0 = no clipping",
    ("trainer.precision", "*"): "eval/app: checked against what Lightning accepts when the trainer is built",
    ("threshold", "0.0"): "every image PNEUMONIA: a valid (if extreme) override",
    ("eval:trainer.max_epochs", "*"): "eval.py trains nothing: the training-only keys of trainer/ are unused",
    ("predict:inputs", "*"): "any file may be given: one that is not an image is listed in bad_images.tsv",
    ("mlflow.experiment_name", "*"): "any text names the MLflow experiment",
    ("mlflow.run_name", "'abc'"): "any text names the MLflow run",
    ("mlflow.artifact_location", "'abc'"): "a folder (made when an experiment is created) or a URI",
    ("export:register", "'abc'"): "a valid registered model name",
}


class Reached(Exception):
    """The run got past every check, to where the data would be read."""


def _stop(*_: Any, **__: Any) -> None:
    raise Reached


def leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key in node.keys():
        name = f"{prefix}.{key}" if prefix else str(key)
        if str(key).startswith("_") or name.startswith("hydra"):
            continue
        if OmegaConf.is_missing(node, key):
            out.append((name, None))
            continue
        child = node._get_node(key)
        if OmegaConf.is_dict(child):
            out.extend(leaves(node[key], name))
        elif OmegaConf.is_list(child):
            out.append((name, list(node[key])))
        else:
            out.append((name, node[key]))
    return out


def mutations(value: Any, a_file: str) -> list[Any]:
    if isinstance(value, bool):
        return ["maybe", 2]
    if isinstance(value, int):
        return ["abc", 1.5, -1, 0]
    if isinstance(value, float):
        return ["abc", -1.0, 0.0, 2.5]
    if isinstance(value, list):
        return ["abc", []]
    if isinstance(value, str):
        return ["nope", MISSING_PATH, a_file]
    if value is None:
        return ["abc", -1]
    return []


def accepted(entry: str, key: str, value: Any) -> bool:
    """Listed in ACCEPTED: as `key` (any entry point) or `entry:key`."""
    text = repr(value)
    return any(
        (fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(f"{entry}:{key}", pattern))
        and (mutation == "*" or mutation == text)
        for (pattern, mutation) in ACCEPTED
    )


def entry_main(config_name: str) -> Any:
    """`main` of the top-level script `<config_name>.py`: given a config, Hydra's decorator calls
    it as it is, so the script's own checks and choice of runner run."""
    spec = importlib.util.spec_from_file_location(f"{config_name}_script", PROJECT_ROOT / f"{config_name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def fuzz(config_name: str, overrides: list[str], out: Path, a_file: str, only: str = "*") -> list[str]:
    base = compose(config_name, overrides, out)
    main = entry_main(config_name)
    problems = []
    for key, value in leaves(base):
        if not fnmatch.fnmatchcase(key, only):
            continue
        for wrong in mutations(value, a_file):
            cfg = base.copy()
            with open_dict(cfg):
                OmegaConf.update(cfg, key, wrong, merge=False)
            err, started = io.StringIO(), time.perf_counter()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(cfg)
                    outcome = "finished"  # the sentinel was not reached: a missing stop, not a pass
                except Reached:
                    outcome = "accepted"
                except SystemExit as exit_:
                    outcome = f"exit {exit_.code}"
                except BaseException as exc:  # noqa: BLE001 (anything else is the finding)
                    outcome = f"traceback {type(exc).__name__}: {str(exc).strip()[:160]}"
            seconds = time.perf_counter() - started
            case = f"{config_name}: {key}={wrong!r}"
            message = err.getvalue().strip()
            if seconds > SECONDS:
                problems.append(f"{case}: took {seconds:.1f} s")
            if outcome == "accepted":
                if not accepted(config_name, key, wrong):
                    problems.append(f"{case}: accepted (check it, or list it in ACCEPTED with the reason)")
            elif outcome == "exit 2":
                lines = [line for line in message.splitlines() if line.strip()]
                leaf = key.split(".")[-1]
                if len(lines) != 1 or not lines[0].startswith("error: "):
                    problems.append(f"{case}: not one error line: {message[:300]!r}")
                elif leaf not in lines[0]:
                    problems.append(f"{case}: the error does not name {key}: {lines[0][:200]}")
            else:
                problems.append(f"{case}: {outcome} {message[-300:]!r}")
    return problems


@pytest.fixture()
def stops(monkeypatch, tmp_path):
    """Sentinels where the entry points would start reading data; the cwd a temp folder
    (relative paths among the wrong values land there)."""
    import pneumonia.data.datamodule as datamodule
    import pneumonia.export.exporter as exporter
    import pneumonia.runners.predict as predict

    monkeypatch.setattr(datamodule.ChestXrayDataModule, "setup", _stop)
    monkeypatch.setattr(predict, "decoded_batches", _stop)
    monkeypatch.setattr(exporter, "export_net", _stop)
    monkeypatch.chdir(tmp_path)
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder")
    return str(a_file)


@pytest.mark.slow
def test_train_config_fuzz(stops, xray_root, tmp_path):
    problems = fuzz(
        "train",
        [f"data.root={xray_root}", f"data.cache_dir={tmp_path / 'cache'}", "logger=none"],
        tmp_path / "out",
        stops,
    )
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_train_config_fuzz_of_the_optional_parts(stops, xray_root, tmp_path):
    """The keys that exist only with a group option or a switch: callbacks=swa, data.stress,
    a torchvision net, an ensemble recipe, a cross-validation."""
    base = [f"data.root={xray_root}", f"data.cache_dir={tmp_path / 'cache'}", "logger=none"]
    problems = []
    for extra, only in (
        (["callbacks=swa"], "callbacks.swa.*"),
        (["model=resnet18"], "model.*"),
        (["experiment=best_ensemble"], "ensemble.*"),
        (["cv.folds=3"], "cv.*"),
    ):
        problems += fuzz("train", base + extra, tmp_path / "out", stops, only=only)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "entry, overrides",
    [
        ("eval", ["data.root={root}", "logger=none"]),
        ("predict", ["inputs={root}/test"]),
        ("export", []),
    ],
)
@pytest.mark.slow
def test_scoring_configs_fuzz(entry, overrides, stops, xray_root, tiny_checkpoint, tmp_path):
    overrides = [o.format(root=xray_root) for o in overrides] + [f"ckpt_path={tiny_checkpoint}"]
    problems = fuzz(entry, overrides, tmp_path / "out", stops)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, expected",
    [
        (["model=resnet"], "model=resnet is not an option of model/"),
        (["optimiser.lr=0.1"], "optimiser.lr is not a setting of train.py"),
        (["-m", "seed=1,2", "model=custom_cnn,nope"], "model=nope is not an option of model/"),
        (["seed=[1"], "cannot read the command line"),
    ],
)
def test_command_line_typos_are_one_line(args, expected, tmp_path):
    result = run_cli("train.py", *args, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    "script, args, expected",
    [
        ("predict", ["input=scans/"], "input is not a setting of predict.py (did you mean inputs?"),
        ("train", ["optimiser.lr=0.1"], "optimiser.lr is not a setting of train.py (did you mean optimizer.lr?"),
        ("train", ["data.batchsize=8"], "(did you mean data.batch_size?"),
        ("train", ["modle=custom_cnn_bn"], "(did you mean model?"),  # a transposition before an insertion (module)
        ("train", ["modle.depth=3"], "(did you mean model.depth?"),
        ("train", ["zzz=1"], "zzz is not a setting of train.py (python train.py --cfg job"),  # nothing close
    ],
)
def test_an_unknown_key_names_the_closest_one(script, args, expected, capsys):
    from pneumonia.config.entry import check_command_line

    with pytest.raises(SystemExit) as exit_:
        check_command_line(script, f"{script}.py", argv=args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err, err


@pytest.mark.parametrize("script", ["eval", "predict", "export", "serve", "app"])
def test_a_wrong_ckpt_path_is_refused_before_torch(script, tmp_path):
    """The quick checks (no torch) name a checkpoint that is missing or is a folder."""
    from pneumonia.config.compose import compose
    from pneumonia.runners.quick import check_or_fail

    extra = {"predict": [f"inputs={tmp_path}"]}.get(script, [])
    missing = check_or_fail(script, compose(script, [f"ckpt_path={tmp_path / 'nope.ckpt'}", *extra]))
    assert missing == f"ckpt_path '{tmp_path / 'nope.ckpt'}' does not exist"
    folder = check_or_fail(script, compose(script, [f"ckpt_path={tmp_path}", *extra]))
    assert folder == f"ckpt_path '{tmp_path}' is not a file"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("intervals.resamples=many", "intervals.resamples='many' must be an integer"),
        ("intervals.seed=-1", "intervals.seed=-1 must be >= 0"),
        ("ece_bins=0", "ece_bins=0 must be >= 1"),
        ("tta=maybe", "tta='maybe' must be true or false"),
        ("temperature=abc", "temperature='abc' must be a positive number"),
        ("temperature=0", "temperature=0 must be a positive number"),
    ],
)
def test_eval_values_are_refused_before_torch(value, expected, tmp_path):
    """eval.py's own keys, under their eval.py names, by the quick checks (no torch), before the
    checkpoint is looked at."""
    from pneumonia.config.compose import compose
    from pneumonia.runners.quick import check_or_fail

    error = check_or_fail("eval", compose("eval", [f"ckpt_path={tmp_path / 'nope.ckpt'}", value]))
    assert error is not None and error.startswith(expected), error
