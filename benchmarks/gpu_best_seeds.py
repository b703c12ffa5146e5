"""`python train.py experiment=best` over seeds: training seconds and validation metrics.

Each run is its own `train.py` process (as a user runs it; a run that fails or hangs costs only
itself, `--run-timeout`), with the settings' defaults (on a GPU: `data.device_resident=auto` and
`module.defer_sync=auto`, that is the fast path) unless `--before` names seeds to run with
both off. The training seconds and the validation report come from each run's
train_summary.json (train_seconds: `fit` alone, validation epochs included) and
val_metrics.json. The JSON is rewritten after every run.

    python benchmarks/gpu_best_seeds.py --data data/chest_xray --seeds 1 2 3 --batch-sizes 32 128
    python benchmarks/gpu_best_seeds.py --smoke          # CPU, synthetic images, 1 epoch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("auroc", "accuracy", "f1", "recall", "specificity", "threshold")
BEFORE = ["data.device_resident=false", "module.defer_sync=false"]


def run_one(args: argparse.Namespace, seed: int, batch: int | None, before: bool, work: Path) -> dict[str, Any]:
    label = f"{'before' if before else 'fast'} b{batch or 'recipe'} seed {seed}"
    run_dir = work / label.replace(" ", "_")
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=best",
        f"seed={seed}",
        f"data.root={args.data}",
        f"data.cache_dir={args.cache_dir}",
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
        *([f"data.batch_size={batch}"] if batch else []),
        *(BEFORE if before else []),
        *args.override,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.run_timeout)
    wall = time.perf_counter() - start
    sys.stdout.write(proc.stdout[-3000:])
    sys.stderr.write(proc.stderr[-3000:])
    if proc.returncode != 0:
        raise RuntimeError(f"{label}: train.py exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    summary = json.loads((run_dir / "train_summary.json").read_text())
    val = json.loads((run_dir / "val_metrics.json").read_text()).get("at_threshold") or summary.get("val") or {}
    return {
        "label": label,
        "config": "before" if before else "fast",
        "batch": batch,
        "seed": seed,
        "train_seconds": summary.get("train_seconds"),
        "epochs": summary.get("epochs"),
        "wall_seconds": round(wall, 1),
        "best_val_auroc_during_training": summary.get("best_score"),
        **{k: val.get(k) for k in KEYS},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/chest_xray")
    ap.add_argument(
        "--cache-dir", default=None, help="data.cache_dir (default: a temporary folder, shared by the runs)"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[0], help="data.batch_size per series; 0 = the recipe's"
    )
    ap.add_argument("--before", type=int, nargs="*", default=[], help="seeds to run last with the fast path off")
    ap.add_argument("--override", nargs="*", default=[], help="more train.py overrides for every run")
    ap.add_argument("--run-timeout", type=float, default=180)
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="CPU, synthetic images, 1 epoch, 1 seed")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="gpu_best_"))
    if args.smoke:
        sys.path.insert(0, str(ROOT / "src"))
        from pneumonia.data.synthetic import make_chest_xray_tree

        args.data = str(make_chest_xray_tree(work / "data", {"train": (40, 40)}))
        args.override = [
            *args.override,
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "trainer.max_epochs=1",
            "data.image_size=48",
            "model.depth=3",
            "intervals.resamples=20",
            "data.decode_threads=1",
        ]
        args.seeds, args.batch_sizes = args.seeds[:1], args.batch_sizes[:1]
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    args.cache_dir = args.cache_dir or str(work / "cache")
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    plan = [(s, b or None, False) for b in args.batch_sizes for s in args.seeds] + [
        (s, None, True) for s in args.before
    ]

    def save() -> None:
        rows = [
            [
                r["config"],
                r["batch"] or "recipe (32)",
                r["seed"],
                r["train_seconds"],
                r["epochs"],
                *(round(r[k], 4) if isinstance(r[k], float) else r[k] for k in KEYS),
            ]
            for r in runs
        ]
        series: dict[str, Any] = {}
        for r in runs:
            series.setdefault(f"{r['config']} b{r['batch'] or 'recipe'}", []).append(r)
        summary = {}
        for key, rs in series.items():
            auc = [r["auroc"] for r in rs if r["auroc"] is not None]
            secs = [r["train_seconds"] for r in rs if r["train_seconds"] is not None]
            summary[key] = {
                "n": len(rs),
                "auroc_mean": statistics.mean(auc) if auc else None,
                "auroc_sd": statistics.stdev(auc) if len(auc) > 1 else None,
                "train_seconds_mean": statistics.mean(secs) if secs else None,
            }
        write_result(
            "gpu_best_seeds",
            title="experiment=best over seeds on the GPU fast path: training time and validation metrics",
            columns=["config", "batch", "seed", "train s", "epochs", *KEYS],
            rows=rows,
            out_dir=args.out_dir,
            notes=(
                "One train.py process per run (experiment=best, 10 epochs, validation every epoch, "
                "TensorBoard logging); 'train s' = train_summary.json's train_seconds (Lightning's fit "
                "alone: validation epochs included, decoding and calibration not); metrics from "
                "val_metrics.json (best checkpoint, the recipe's TTA, threshold by its rule)."
                + (" SMOKE RUN: CPU, synthetic images, 1 epoch; not a measurement." if args.smoke else "")
            ),
            extra={"runs": runs, "series": summary, "failures": failures, "overrides": args.override},
        )

    for seed, batch, before in plan:
        try:
            r = run_one(args, seed, batch, before, work)
            runs.append(r)
            print(f"{r['label']}: {r['train_seconds']} s training, val AUROC {r['auroc']}", flush=True)
        except Exception as e:  # noqa: BLE001 - one run failing must not lose the others
            failures.append(f"seed {seed} batch {batch} before={before}: {type(e).__name__}: {str(e)[:500]}")
            print(failures[-1], flush=True)
        save()
    if not runs:
        raise SystemExit("no run finished")


if __name__ == "__main__":
    main()
