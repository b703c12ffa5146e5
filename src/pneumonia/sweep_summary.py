"""Summarise a multirun: every job's overrides and validation metrics, best first.

    python -m pneumonia.sweep_summary outputs/multirun/<date_time>

Prints a table and writes `summary.csv` and `summary.md` into the sweep folder. Jobs that
did not finish are listed last as failed, with their overrides.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import yaml

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auroc", "threshold")


def read_job(job_dir: Path) -> dict[str, Any]:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    config_file = job_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    row: dict[str, Any] = {"job": job_dir.name, "overrides": " ".join(overrides or []),
                           "monitor_mode": config.get("monitor_mode", "max")}
    summary_file = job_dir / "train_summary.json"
    if not summary_file.is_file():
        row["status"] = "failed"
        return row
    summary = json.loads(summary_file.read_text())
    row.update(status="ok", monitor=summary.get("monitor"), best=summary.get("best_score"),
               epochs=summary.get("epochs"), train_minutes=summary.get("train_minutes"))
    for k in METRICS:
        row[f"val_{k}"] = summary.get("val", {}).get(k)
    return row


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    jobs = [d for d in sweep_dir.iterdir() if d.is_dir() and (d / ".hydra").is_dir()]
    if not jobs:
        raise SystemExit(f"error: no Hydra job folders (with .hydra/) under {sweep_dir}")
    rows = [read_job(d) for d in jobs]
    ok = [r for r in rows if r["status"] == "ok" and r.get("best") is not None]
    ok.sort(key=lambda r: r["best"], reverse=ok[0]["monitor_mode"] == "max" if ok else True)
    return ok + [r for r in rows if r not in ok]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"error: {args.sweep_dir} is not a folder")
    rows = collect(args.sweep_dir)
    columns = ["job", "status", "overrides", "monitor", "best", *[f"val_{k}" for k in METRICS], "epochs",
               "train_minutes"]
    with (args.sweep_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    table = "\n".join(lines)
    (args.sweep_dir / "summary.md").write_text(table + "\n")
    print(table)
    print(f"\n{len(rows)} jobs; written to {args.sweep_dir / 'summary.csv'} and summary.md", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
