"""`python -m pneumonia.tools.describe data.root=DIR` (or `--root DIR`): the dataset overview of
`pneumonia.data.describe`, written to `outputs/describe/<date_time>/` (`--out DIR`):
`dataset.json`, `samples.png`."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pneumonia.data.describe import SPLITS, describe_root, format_overview, sample_grid
from pneumonia.errors import UserError


# ---- command line -----------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    # `data.root=DIR` (as train.py and eval.py take it) is accepted as well as `--root DIR`
    argv = [f"--root={a.split('=', 1)[1]}" if a.startswith("data.root=") else a for a in argv]
    parser = argparse.ArgumentParser(
        prog="python -m pneumonia.tools.describe",
        description="Counts, patients, duplicates, sizes and sample images of a chest X-ray data root.",
    )
    parser.add_argument("--root", default="data/chest_xray", help="the folder holding train/ (val/, test/)")
    parser.add_argument("--out", default=None, help="output folder (default outputs/describe/<date_time>)")
    parser.add_argument("--splits", default=",".join(SPLITS), help="splits to describe (comma-separated)")
    parser.add_argument("--samples", type=int, default=6, help="sample images per class in samples.png (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="which sample images")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        desc = describe_root(args.root, [s for s in args.splits.split(",") if s])
        out = Path(args.out or Path("outputs") / "describe" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "dataset.json").write_text(json.dumps(desc, indent=2))
        if args.samples > 0:
            first = next(iter(desc["splits"]))
            sample_grid(args.root, out / "samples.png", split=first, per_class=args.samples, seed=args.seed)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_overview(desc))
    print(f"\nWritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
