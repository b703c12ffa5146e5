"""`python -m pneumonia.tools.calibrate CKPT`: choose a checkpoint's decision threshold on its
validation split and store it in the checkpoint, as train.py does after training (for a
checkpoint whose calibration never ran: eval, predict, export and the app refuse it)."""

from __future__ import annotations

import logging


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from pneumonia.errors import UserError

    parser = argparse.ArgumentParser(
        prog="python -m pneumonia.tools.calibrate",
        description="Choose a checkpoint's decision threshold on its validation split and store it in the "
        "checkpoint (what train.py does after training; for a checkpoint whose calibration never ran).",
    )
    parser.add_argument("checkpoint", help="a checkpoint of train.py, e.g. outputs/train/<run>/checkpoints/best.ckpt")
    parser.add_argument("--data-root", default=None, help="the data root, when not the one stored in the checkpoint")
    parser.add_argument("--accelerator", default="auto", help="auto (a GPU when there is one) | cpu | gpu")
    args = parser.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning's own deprecation, at predict time
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from pneumonia.runners.calibration import recalibrate

        report_ = recalibrate(args.checkpoint, data_root=args.data_root, accelerator=args.accelerator)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Stored threshold {report_['threshold']:.4f} in {args.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
