"""`python -m pneumonia.tools.ensemble DIR [DIR ...]`: several checkpoints become one model.

    python -m pneumonia.tools.ensemble outputs/multirun/<time>                  # every job's best.ckpt
    python -m pneumonia.tools.ensemble outputs/best/<run a> outputs/best/<run b> [--combine logit]
    python -m pneumonia.tools.ensemble a.ckpt b.ckpt c.ckpt --out outputs/ensemble/mine --data-root data/chest_xray

A DIR is a run folder (its checkpoints/best.ckpt), a multirun folder (the best.ckpt of every
job in it) or a .ckpt file; at least 2 members. Writes `<out>/checkpoints/best.ckpt` (an
ordinary checkpoint: eval.py, predict.py, export.py and app.py take it), `val_metrics.json`,
`ensemble.json` and `train_summary.json`; default out: `outputs/ensemble/<time>/`. Bad input
is one line, `error: ...`, exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path

from pneumonia.evaluation.threshold import METHODS
from pneumonia.errors import UserError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pneumonia.tools.ensemble",
        description="Average several trained checkpoints into one model with its own validation-chosen threshold.",
    )
    parser.add_argument(
        "sources", nargs="+", metavar="DIR", help="run folder, multirun folder or .ckpt file (2 or more members in all)"
    )
    parser.add_argument(
        "--out",
        help="run folder to write (checkpoints/best.ckpt inside), or a .ckpt path; default outputs/ensemble/<time>/",
    )
    parser.add_argument(
        "--combine",
        choices=("prob", "logit"),
        default="prob",
        help="average the members' probabilities (default) or their logits",
    )
    parser.add_argument(
        "--data-root",
        help="where the training images are now (default: the members' data.root); "
        "the validation split is carved from it as in training",
    )
    parser.add_argument("--cache-dir", help="decoded-image cache (default: the members' data.cache_dir)")
    parser.add_argument("--threshold-method", choices=METHODS, help="default: the members' threshold.method")
    parser.add_argument(
        "--temperature",
        choices=("yes", "no"),
        help="fit a temperature on the ensemble's validation logits (default: as the members' recipe)",
    )
    parser.add_argument(
        "--precision",
        help="scoring precision for validation (default: the one the members' thresholds were chosen under)",
    )
    parser.add_argument("--accelerator", default="auto", help="auto (a GPU when there is one), cpu or gpu")
    return parser.parse_args(argv)


def out_paths(out: str | None) -> tuple[Path, Path | None]:
    """(run folder, checkpoint path or None for <run>/checkpoints/best.ckpt)."""
    if not out:
        return Path("outputs") / "ensemble" / f"{datetime.now():%Y-%m-%d_%H-%M-%S-%f}", None
    path = Path(out).expanduser()
    if path.suffix == ".ckpt":
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run, path
    if path.is_file():
        raise UserError(f"--out '{path}' is a file: give a folder or a .ckpt path")
    return path, None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        from pneumonia.ensemble.members import find_members

        paths = find_members(args.sources)
        out_dir, ckpt_path = out_paths(args.out)
        import lightning.pytorch  # noqa: F401  (sets its loggers' levels on import: quieted after it)

        from pneumonia.ensemble.build import build_ensemble, eval_command, members_table

        for name in (
            "lightning.pytorch",
            "lightning.fabric",
            "lightning.pytorch.utilities.rank_zero",
            "lightning.fabric.utilities.rank_zero",
        ):
            logging.getLogger(name).setLevel(logging.WARNING)

        summary = build_ensemble(
            paths,
            out_dir,
            ckpt_path=ckpt_path,
            combine=args.combine,
            data_root=args.data_root,
            cache_dir=args.cache_dir,
            threshold={"method": args.threshold_method} if args.threshold_method else None,
            calibration={"temperature": args.temperature == "yes"} if args.temperature else None,
            precision=args.precision,
            accelerator=args.accelerator,
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ckpt = Path(summary["checkpoint"])
    print(
        f"\n{members_table(summary)}\n\nEnsemble of {len(summary['members'])} members written to {ckpt}\n"
        f"Next: {eval_command(ckpt)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
