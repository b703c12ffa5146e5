"""`python -m pneumonia.tools.threshold_study CKPT [CKPT ...]`: each threshold rule's spread and
held-out score on the validation split (the statistics: `pneumonia.evaluation.threshold_study`)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.evaluation.threshold_study import RULES, SHIFT, across_checkpoints, markdown_report, study_scores

log = logging.getLogger(__name__)


# ---- scoring the validation split, as calibration does ----------------------------------------
def validation_scores(
    ckpt_path: str | Path, data_root: str | None = None, datamodules: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Probabilities, raw logits (no temperature), labels, paths and patient ids of the
    checkpoint's validation split, through `calibration.predict_logits` (the path that chose
    the stored threshold), under the precision stored with that threshold. `datamodules`
    caches DataModules by the settings that define the split, so seeds of one recipe share one."""
    import lightning as L

    from pneumonia.data.datamodule import ChestXrayDataModule
    from pneumonia.data.patients import patient_id
    from pneumonia.evaluation.calibration import predict_logits
    from pneumonia.inference import Predictor

    raw = Predictor.from_checkpoint(ckpt_path, temperature=1.0, require_calibration=False)  # as calibration scores
    settings = dict(raw.data_settings)
    if data_root is not None:
        settings["root"] = str(data_root)
    settings["bad_image_report"] = None
    # what defines the validation images and how they are decoded (not the training seed or batches)
    from pneumonia.ensemble.members import INPUT_KEYS, SPLIT_KEYS

    key = json.dumps({k: settings.get(k) for k in (*SPLIT_KEYS, *INPUT_KEYS, "cache_dir")}, sort_keys=True, default=str)
    datamodules = {} if datamodules is None else datamodules
    if key not in datamodules:
        datamodules[key] = ChestXrayDataModule(**settings)
    datamodule = datamodules[key]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=raw.precision,  # type: ignore[arg-type]  # a precision string the config checks; Lightning types it as Literals
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    probs, labels, indices, logits = predict_logits(trainer, raw.lightning_module(), datamodule, "val")
    paths = [datamodule.paths["val"][i] for i in indices.tolist()]
    return {
        "checkpoint": str(ckpt_path),
        "seed": raw.recipe.seed,
        "probs": probs.double().numpy(),
        "logits": logits.double().numpy(),
        "labels": labels.long().numpy(),
        "paths": paths,
        "patients": [patient_id(p) for p in paths],
        "stored_threshold": raw.threshold,
        "stored_method": raw.recipe.threshold_method,
        "stored_temperature": raw.recipe.temperature,
        "precision": raw.precision,
    }


def run_study(
    checkpoints: Sequence[str],
    data_root: str | None = None,
    *,
    splits: int = 300,
    resamples: int = 1000,
    seed: int = 0,
    rules: Sequence[tuple[str, str, dict[str, Any]]] = RULES,
) -> dict[str, Any]:
    from pneumonia.evaluation.statistics import auroc

    datamodules: dict[str, Any] = {}
    entries, studies = [], []
    scoring = stats = 0.0
    for path in checkpoints:
        start = time.perf_counter()
        scores = validation_scores(path, data_root, datamodules)
        mid = time.perf_counter()
        study = study_scores(
            scores["probs"],
            scores["labels"],
            scores["logits"],
            scores["patients"],
            rules=rules,
            splits=splits,
            resamples=resamples,
            seed=seed,
        )
        scoring, stats = scoring + mid - start, stats + time.perf_counter() - mid
        y = scores["labels"]
        entries.append(
            {
                k: scores[k]
                for k in ("checkpoint", "seed", "stored_threshold", "stored_method", "stored_temperature", "precision")
            }
            | {
                "n": int(len(y)),
                "n_normal": int((y == 0).sum()),
                "patients": len(set(scores["patients"])),
                "auroc": auroc(scores["probs"], y),
                "rules": study,
            }
        )
        studies.append(study)
        log.info("%s: scored in %.1f s, studied in %.1f s", path, mid - start, time.perf_counter() - mid)
    return {
        "settings": {
            "splits": splits,
            "resamples": resamples,
            "seed": seed,
            "shift_logits": SHIFT,
            "rules": [{"name": n, "method": m, "options": o} for n, m, o in rules],
        },
        "checkpoints": entries,
        "across_checkpoints": across_checkpoints(studies),
        "seconds": stats,
        "scoring_seconds": scoring,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pneumonia.tools.threshold_study",
        description="Spread and held-out accuracy of each threshold rule on validation.",
    )
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT")
    parser.add_argument("--data-root", default=None, help="the data root, when not the one stored in the checkpoints")
    parser.add_argument("--splits", type=int, default=300, help="split-halves (default 300)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of patients (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        action="append",
        default=[],
        metavar="FILE",
        help="write the tables (.md) or everything (.json); no suffix: both; repeatable",
    )
    args = parser.parse_args(argv)
    from pneumonia.errors import UserError

    if args.splits < 1 or args.resamples < 1:
        print("error: --splits and --resamples must be >= 1", file=sys.stderr)
        return 2
    import warnings

    import lightning  # noqa: F401  (first: it sets its own log level on import)

    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning's own deprecation, at predict time

    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no Trainer banners between the tables
    try:
        result = run_study(
            args.checkpoints, args.data_root, splits=args.splits, resamples=args.resamples, seed=args.seed
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    text = markdown_report(result)
    print(text)
    for out in args.out:
        path = Path(out)
        targets = [path] if path.suffix in (".md", ".json") else [path.with_suffix(".md"), path.with_suffix(".json")]
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(result, indent=2, default=_json_default) if target.suffix == ".json" else text)
            print(f"Written to {target}")
    return 0


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    raise TypeError(type(x).__name__)


if __name__ == "__main__":
    raise SystemExit(main())
