"""Summarise a multirun: every job's overrides and validation metrics, best first.

    python -m pneumonia.tools.sweep_summary outputs/multirun/<date_time>

Prints a table and writes `summary.csv` and `summary.md` into the sweep folder. Jobs that
did not finish (failed, killed or still running) are listed last as `unfinished`. In an
Optuna search (`hparams_search=optuna`), a job its trial's pruner stopped is listed as
`pruned at epoch E`, after the jobs that trained all their epochs: its values are those of a
shorter run.

    python -m pneumonia.tools.sweep_summary outputs/multirun/<date_time> --over-seeds

also groups the jobs that differ only in `seed=` and prints each group's mean, sample
standard deviation and range (`seeds.csv`, `seeds.md`): one seed's number is not a result.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from pneumonia.evaluation import METRIC_NAMES
from pneumonia.evaluation.artefacts import read_train_summary, train_summary_path

METRICS = (*METRIC_NAMES, "threshold")


def read_job(job_dir: Path) -> dict[str, Any]:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    # the sweeper's own keys (the study's storage and the trial number) are no setting of the job
    overrides = [o for o in overrides or [] if not str(o).startswith(("optuna.", "hparams_search="))]
    config_file = job_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    row: dict[str, Any] = {
        "job": job_dir.name,
        "overrides": " ".join(overrides or []),
        "monitor_mode": config.get("monitor_mode", "max"),
    }
    if not train_summary_path(job_dir).is_file():
        row["status"] = "unfinished"
        return row
    summary = read_train_summary(job_dir)
    # a job that ran but kept no scored checkpoint (debug=fdr, max_epochs reached before a validation)
    status = "ok" if summary.best_score is not None else "no score"
    if summary.pruned_at_epoch is not None:
        status = f"pruned at epoch {summary.pruned_at_epoch}"
    row.update(
        status=status,
        trial=summary.trial,
        monitor=summary.monitor,
        best=summary.best_score,
        epochs=summary.epochs,
        train_minutes=summary.train_minutes,
    )
    for k in METRICS:
        row[f"val_{k}"] = summary.val.get(k)
    return row


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    jobs = [d for d in sweep_dir.iterdir() if d.is_dir() and (d / ".hydra").is_dir()]
    if not jobs:
        raise SystemExit(f"error: no Hydra job folders (with .hydra/) under {sweep_dir}")
    rows = [read_job(d) for d in jobs]

    # best first within each monitor: val/auroc and val/loss values are not comparable; the jobs
    # that trained all their epochs, then the pruned ones
    def best_first(status: str) -> list[dict[str, Any]]:
        kept = [r for r in rows if r["status"].startswith(status) and r.get("best") is not None]
        return sorted(kept, key=lambda r: (str(r["monitor"]), -r["best"] if r["monitor_mode"] == "max" else r["best"]))

    ranked = best_first("ok") + best_first("pruned")
    return ranked + [r for r in rows if r not in ranked]


def without_seed(overrides: str) -> str:
    return " ".join(o for o in overrides.split() if not o.startswith("seed="))


def over_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished jobs grouped by their overrides without `seed=`; mean, std, min, max per metric."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "ok":
            groups.setdefault(without_seed(r["overrides"]), []).append(r)
    out = []
    for overrides, members in groups.items():
        seeds = [o.split("=", 1)[1] for r in members for o in r["overrides"].split() if o.startswith("seed=")]
        seeds.sort(key=lambda v: (0, int(v), "") if v.lstrip("-").isdigit() else (1, 0, v))  # numeric order
        agg: dict[str, Any] = {"overrides": overrides, "n": len(members), "seeds": " ".join(seeds)}
        for key in (*[f"val_{k}" for k in METRICS], "epochs", "train_minutes"):
            values = [float(r[key]) for r in members if r.get(key) is not None]
            if values:
                agg[f"{key}_mean"] = statistics.fmean(values)
                agg[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None  # one seed: no spread
                agg[f"{key}_min"], agg[f"{key}_max"] = min(values), max(values)
        out.append(agg)
    return out


def write_table(
    rows: list[dict[str, Any]], columns: list[str], cells, folder: Path, stem: str, csv_fields: list[str] | None = None
) -> str:
    """`<stem>.csv` (csv_fields, default the columns) and `<stem>.md`; returns the markdown table."""
    with (folder / f"{stem}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=csv_fields or columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells(r, c) for c in columns) + " |" for r in rows]
    table = "\n".join(lines)
    (folder / f"{stem}.md").write_text(table + "\n")
    return table


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(
        prog="python -m pneumonia.tools.sweep_summary",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument(
        "--over-seeds", action="store_true", help="also print mean ± std over the jobs that differ only in seed="
    )
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"error: {args.sweep_dir} is not a folder")
    rows = collect(args.sweep_dir)
    columns = [
        "job",
        "status",
        *(["trial"] if any(r.get("trial") is not None for r in rows) else []),
        "overrides",
        "monitor",
        "best",
        *[f"val_{k}" for k in METRICS],
        "epochs",
        "train_minutes",
    ]
    print(write_table(rows, columns, lambda r, c: fmt(r.get(c)), args.sweep_dir, "summary"))
    print(f"\n{len(rows)} jobs; written to {args.sweep_dir / 'summary.csv'} and summary.md", file=sys.stderr)
    if args.over_seeds:
        groups = over_seeds(rows)
        keys = [f"val_{k}" for k in ("auroc", "accuracy", "f1", "precision", "recall", "specificity", "threshold")]

        def cell(g: dict[str, Any], c: str) -> str:
            if c in ("overrides", "n", "seeds"):
                return str(g[c])
            if f"{c}_mean" not in g:
                return ""
            digits = 1 if c == "train_minutes" else 4
            if g[f"{c}_std"] is None:
                return f"{g[c + '_mean']:.{digits}f} (1 seed)"
            return f"{g[c + '_mean']:.{digits}f} ± {g[c + '_std']:.{digits}f}"

        print("\nmean ± sample standard deviation over seeds:\n")
        fields = list(dict.fromkeys(k for g in groups for k in g))
        print(
            write_table(
                groups,
                ["overrides", "n", "seeds", *keys, "train_minutes"],
                cell,
                args.sweep_dir,
                "seeds",
                csv_fields=fields,
            )
        )
        print(f"\n{len(groups)} groups; written to {args.sweep_dir / 'seeds.csv'} and seeds.md", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
