"""What pruning saves: the same Optuna search with and without a pruner, its wall time and its
trial states (docs/sweeps.md, "What pruning saves").

    python benchmarks/sweep_pruning.py                          # 12 trials, debug=tiny, synthetic data
    python benchmarks/sweep_pruning.py --trials 20 --epochs 10 -- data.root=data/chest_xray experiment=best

Runs `python train.py -m hparams_search=optuna` twice with the same sampler seed, once per
pruner (`--pruners`, default median and none), each in its own sweep folder under `--out`,
and prints one line per search: seconds, trials complete/pruned/failed, the epochs trained in
all, the best value, and the trials whose parameters the two searches share. Writes
docs/results/<--name>.json (default sweep_pruning; the docs table is rendered from it). Anything after
`--` goes to every search (the default: a tiny CNN on `python -m pneumonia.data.synthetic`
images, written to `--out` first).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from results import ROOT, write_result

TINY = [
    "debug=tiny",
    "data.image_size=96",
    "model.widths=[8,8,16,16,16]",
    "callbacks.early_stopping=null",
    "logger=none",
    "callbacks.gradcam=null",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "threads=1",
]


def search(out: Path, pruner: str, trials: int, epochs: int, extra: list[str]) -> dict:
    import optuna

    sweep = out / f"sweep_{pruner}"
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "hparams_search=optuna",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra/sweeper/pruner={pruner}",
        f"trainer.max_epochs={epochs}",
        f"hydra.sweep.dir={sweep}",
        *extra,
    ]
    if pruner == "median":
        args.append("hydra.sweeper.pruner.n_startup_trials=3")
    start = time.perf_counter()
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"error: the search with pruner={pruner} failed: {res.stderr.strip().splitlines()[-1]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="pneumonia", storage=f"sqlite:///{sweep / 'optuna.db'}")
    states = [t.state.name.lower() for t in study.trials]
    epochs_trained = sum(json.loads(f.read_text()).get("epochs") or 0 for f in sweep.glob("*/train_summary.json"))
    return {
        "pruner": pruner,
        "seconds": round(seconds, 1),
        "complete": states.count("complete"),
        "pruned": states.count("pruned"),
        "fail": states.count("fail"),
        "epochs_trained": epochs_trained,
        "best_value": study.best_value,
        "params": [t.params for t in study.trials],
        "pruned_at": {t.number: max(t.intermediate_values) for t in study.trials if t.state.name == "PRUNED"},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--pruners", nargs="+", default=["median", "none"])
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_sweep_pruning"))
    ap.add_argument("--name", default="sweep_pruning", help="docs/results/<name>.json")
    ap.add_argument("--note", default="")
    ap.add_argument("extra", nargs="*", help="overrides for every search (after --)")
    args = ap.parse_args()
    extra = args.extra
    if not extra:
        from pneumonia.data.synthetic import make_chest_xray_tree

        data = args.out / "data"
        if not (data / "train").is_dir():
            make_chest_xray_tree(data)
        extra = [f"data.root={data}", f"data.cache_dir={args.out / 'cache'}", *TINY]
    results = [search(args.out, p, args.trials, args.epochs, extra) for p in args.pruners]
    rows = []
    for r in results:
        shared = sum(a == b for a, b in zip(r["params"], results[0]["params"]))
        at = sorted(r["pruned_at"].values())
        print(
            f"pruner={r['pruner']}: {r['seconds']} s, {r['complete']} complete, {r['pruned']} pruned "
            f"(at epochs {at}), {r['fail']} failed, {r['epochs_trained']} epochs "
            f"trained, best {r['best_value']:.4f}; {shared}/{len(r['params'])} parameter sets as in the first search"
        )
        pruned = f"{r['pruned']}" + (f" (after epochs {', '.join(str(e) for e in at)})" if at else "")
        rows.append(
            [r["pruner"], r["seconds"], f"{r['complete']} / {pruned}", r["epochs_trained"], round(r["best_value"], 4)]
        )
    write_result(
        args.name,
        title=(
            f"The same {args.trials}-trial Optuna search ({args.epochs} epochs per trial, fixed sampler seed) with and "
            "without a pruner"
        ),
        columns=["pruner", "wall s", "trials complete / pruned", "epochs trained", "best value"],
        rows=rows,
        notes=(
            f"Overrides of every search: {' '.join(extra) if args.extra else 'the synthetic default (debug=tiny, 96 px)'}. "
            + args.note
        ).strip(),
    )


if __name__ == "__main__":
    main()
