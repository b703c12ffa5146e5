"""Assemble members into one ensemble checkpoint and choose its threshold on validation.

The checkpoint is an ordinary one of this project (`pneumonia.inference.checkpoint`): its
`net` is a `pneumonia.models.Ensemble` spec holding the members' specs and their stored
temperatures, `net.*` the members' weights, the data settings the members' (which must
agree on the validation split), plus an `ensemble` record of the members. Then the same
`calibrate_threshold` that train.py runs after training scores the validation split with
the ensemble, fits its own temperature when the recipe asks (`calibration.temperature`),
chooses and stores the threshold with the recipe's `threshold.method`, and writes
`val_metrics.json`. `ensemble.json` and `train_summary.json` put the members' validation
numbers beside the ensemble's.

The fold models of a cross-validation (`cv.ensemble=true`, `pneumonia.ensemble.cv`) are
built the same way, but no validation split is left that none of them trained on: their
threshold (and temperature) is chosen on the out-of-fold scores instead (`oof`), each
training image scored by the fold model that never saw it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pneumonia.ensemble.members import (
    SUMMARY_KEYS,
    EnsembleError,
    Member,
    check_agreement,
    common_setting,
    load_member,
)
from pneumonia.evaluation import METRIC_NAMES
from pneumonia.evaluation.artefacts import TrainSummary, write_train_summary
from pneumonia.inference import checkpoint as ckpt_format

if TYPE_CHECKING:
    from pneumonia.runners.calibration import Scores

log = logging.getLogger(__name__)

ENSEMBLE_TARGET = "pneumonia.models.Ensemble"
MODULE_KEYS = ("optimizer", "scheduler", "pos_weight", "channels_last")  # the members' module settings kept


def ensemble_spec(members: Sequence[Member], combine: str) -> dict[str, Any]:
    """The `Ensemble` net spec: the members' specs and stored temperatures."""
    return {
        "_target_": ENSEMBLE_TARGET,
        "members": [m.net for m in members],
        "temperatures": [m.temperature for m in members],
        "combine": combine,
    }


def build_ensemble(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    ckpt_path: str | Path | None = None,
    combine: str = "prob",
    data_root: str | None = None,
    cache_dir: str | None = None,
    threshold: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    intervals: dict[str, Any] | None = None,
    precision: str | None = None,
    accelerator: str = "auto",
    monitor: str | None = None,
    oof: Scores | None = None,
    oof_reference: dict[str, Any] | None = None,
    cv: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the ensemble of the checkpoints `paths` into `ckpt_path` (default
    `<out_dir>/checkpoints/best.ckpt`), calibrated on validation; write val_metrics.json,
    ensemble.json and train_summary.json into `out_dir`. `threshold`, `calibration` and
    `intervals` default to the members' recipe (which must agree), `precision` to the one
    the members' thresholds were chosen under. Returns the summary (ensemble.json).

    `oof`: the members are the fold models of one cross-validation (`cv`: its record, kept in
    the checkpoint's `ensemble`), each scoring the images of its held-out fold: the threshold
    and temperature are chosen on these scores (the shift reference: `oof_reference`), and
    the checkpoint's data settings are the members' without the fold."""
    import lightning as L

    from pneumonia.data.datamodule import ChestXrayDataModule
    from pneumonia.evaluation.calibration import check_settings
    from pneumonia.runners.calibration import calibrate_scores, calibrate_threshold
    from pneumonia.hardware import auto_precision
    from pneumonia.models.classifier import PneumoniaClassifier
    from pneumonia.models.ensemble import COMBINES

    start = time.perf_counter()
    if combine not in COMBINES:
        raise EnsembleError(f"combine={combine!r} must be one of: {', '.join(COMBINES)}")
    if len(paths) < 2:
        raise EnsembleError(f"an ensemble needs at least 2 members; {len(paths)} given")
    out_dir = Path(out_dir)
    ckpt_path = Path(ckpt_path) if ckpt_path else out_dir / "checkpoints" / "best.ckpt"
    if ckpt_path.exists():
        raise EnsembleError(f"'{ckpt_path}' already exists: choose another output (--out)")
    members = [load_member(Path(p)) for p in paths]
    check_agreement(members, ignore=("fold",) if oof is not None else ())
    threshold = common_setting(members, "threshold", "; choose with --threshold-method", threshold)
    # the ensemble fits its own temperature when the members' recipe did; ece_bins and the
    # bootstrap settings only shape the report: the first member's where not given
    cal = {**members[0].recipe["calibration"], **(calibration or {})}
    cal["temperature"] = common_setting(
        members,
        "calibration",
        "; choose with --temperature yes|no",
        {**{"ece_bins": cal["ece_bins"]}, **(calibration or {})},
    )["temperature"]
    boot = {**members[0].recipe["intervals"], **(intervals or {})}
    check_settings(cal, boot)
    stored = {m.calibration.precision for m in members}
    precision = precision or (stored.pop() if len(stored) == 1 and None not in stored else auto_precision(accelerator))
    monitor = monitor or members[0].recipe["run"]["monitor"]

    # the network: the members' specs and weights in one LightningModule, as training saves it
    spec = ensemble_spec(members, combine)
    first = ckpt_format.module_settings(members[0].ckpt)
    settings = {"net": spec, **{k: first[k] for k in MODULE_KEYS if k in first}}
    # built from the spec alone, as the Predictor will; pretrained=False: no download of a
    # member's pretrained weights, its own replace them
    module = PneumoniaClassifier(**settings, pretrained=False)
    for i, m in enumerate(members):
        try:
            cast(Any, module.net).members[i].load_state_dict(ckpt_format.net_state(m.ckpt))  # the Ensemble
        except RuntimeError as err:
            raise EnsembleError(
                f"'{m.path}': the weights do not fit the network it names ({str(err).strip().splitlines()[0]})"
            ) from None

    described = [m.describe() for m in members]  # reads each member's train_summary.json once

    # the validation split the members were chosen and calibrated on
    data = dict(members[0].data)
    if data_root:
        data["root"] = str(data_root)
    if cache_dir is not None:
        data["cache_dir"] = cache_dir
    data.update(bad_image_report=None, download=False)
    record: dict[str, Any] = {"combine": combine, "members": described}
    if oof is not None:
        data.update(folds=None, fold=None)  # every fold trained one member: no split is held out
        record["cv"] = dict(cv or {})
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if oof is None:
            datamodule = ChestXrayDataModule(**{**data, "bad_image_report": str(out_dir / "bad_images.tsv")})
            datamodule.check_layout(("fit",))
            datamodule.setup("fit")
            n_val = len(datamodule.splits["val"])
            for m in members:
                n = (m.calibration.val_report or {}).get("n")
                if n is not None and int(n) != n_val:
                    raise EnsembleError(
                        f"the validation split of '{datamodule.hparams.root}' has {n_val} images, but "
                        f"'{m.path}' was calibrated on {n} images: the data changed since training (or "
                        "--data-root points at other data)"
                    )
        written = ckpt_format.new_checkpoint(
            ckpt_path,
            state_dict=module.state_dict(),
            module_settings=settings,
            data_settings=data,
            ensemble=record,
        )
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            precision=precision,  # type: ignore[arg-type]  # a precision string the config checks; Lightning types it as Literals
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
        )
        # the checkpoint just written, as it is in memory: calibration reads no file
        if oof is None:
            val_report = calibrate_threshold(
                trainer,
                datamodule,
                str(ckpt_path),
                threshold,
                out_dir,
                calibration=cal,
                interval_settings=boot,
                loaded=written,
            ).val_report
        else:
            val_report = calibrate_scores(
                str(ckpt_path),
                oof,
                threshold,
                out_dir,
                calibration=cal,
                interval_settings=boot,
                precision=str(trainer.precision),
                shift_reference=oof_reference,
                loaded=written,
            ).val_report
    except BaseException:
        ckpt_path.unlink(missing_ok=True)  # never leave an uncalibrated ensemble behind
        if created and not any(f.is_file() for f in out_dir.rglob("*")):
            shutil.rmtree(out_dir, ignore_errors=True)  # nor an empty run folder
        raise

    keep = SUMMARY_KEYS
    summary = {
        "checkpoint": str(ckpt_path),
        "combine": combine,
        "threshold_method": threshold["method"],
        "precision": str(trainer.precision),
        "temperature_fitted": bool(cal["temperature"]),
        "members": described,
        "val": {k: val_report[k] for k in keep if k in val_report},
        **({"cv": record["cv"]} if "cv" in record else {}),
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (out_dir / "ensemble.json").write_text(json.dumps(summary, indent=2))
    minutes = [d["train_minutes"] for d in described]
    key = monitor.split("/", 1)[-1]
    train_summary = TrainSummary(
        best_checkpoint=str(ckpt_path),
        monitor=monitor,
        best_score=val_report.get(key) if monitor.startswith("val/") else None,
        epochs=None,
        members=len(members),
        train_minutes=round(sum(minutes), 2) if None not in minutes else None,
        val={k: val_report[k] for k in (*METRIC_NAMES, "threshold") if k in val_report},
    )
    write_train_summary(out_dir, train_summary)
    return summary


def members_table(summary: dict[str, Any]) -> str:
    """The members' validation AUROC, accuracy and threshold beside the ensemble's."""
    rows: list[tuple[str, ...]] = [("member", "seed", "AUROC", "accuracy", "F1", "threshold")]
    for i, m in enumerate(summary["members"]):
        v = m["val"]
        rows.append(
            (
                f"{i}: {_short(m['checkpoint'])}",
                str(m["seed"]),
                *(_fmt(v.get(k)) for k in ("auroc", "accuracy", "f1", "threshold")),
            )
        )
    v = summary["val"]
    rows.append(
        (f"ensemble ({summary['combine']})", "", *(_fmt(v.get(k)) for k in ("auroc", "accuracy", "f1", "threshold")))
    )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return f"Validation ({v.get('n')} images), {summary['threshold_method']} thresholds:\n" + "\n".join(lines)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def _short(path: str, width: int = 60) -> str:
    p = Path(path)
    text = str(p.parent.parent.name if p.parent.name == "checkpoints" else p)
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def eval_command(ckpt: str | Path) -> str:
    """`python eval.py ckpt_path=<ckpt>`, quoted as Hydra's command line needs when the path
    has `=` or `,` (a multirun job's folder)."""
    from pneumonia.config.entry import cli_override

    return f"python eval.py {cli_override('ckpt_path', ckpt)}"
