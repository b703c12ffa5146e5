"""`python -m pneumonia.tools.stress CKPT [CKPT ...]`: stress validation of checkpoints on
their own validation split (rebuilt from their data settings), plain and under the
acquisition changes of `pneumonia.data.stress`, at their stored thresholds."""

from __future__ import annotations

from pneumonia.errors import ConfigError, UserError


def main(argv: list[str] | None = None) -> None:
    """python -m pneumonia.tools.stress CKPT [CKPT ...]: plain and stress validation metrics of
    each checkpoint, on its own validation split, at its stored threshold."""
    import argparse
    import json
    import sys
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m pneumonia.tools.stress",
                                 description="Stress validation of checkpoints: their validation split (rebuilt from "
                                             "their data settings) plain and under acquisition changes.")
    ap.add_argument("checkpoints", nargs="+", help="best.ckpt files (or run folders holding checkpoints/best.ckpt)")
    ap.add_argument("--data-root", default=None, help="data.root (default: the one stored in each checkpoint)")
    ap.add_argument("--cache-dir", default=None, help="decoded image cache (default: the one stored)")
    ap.add_argument("--tta", choices=("stored", "on", "off"), default="stored",
                    help="test-time augmentation: as the checkpoint's recipe says (stored), or forced on/off")
    ap.add_argument("--threshold", type=float, default=None, help="default: each checkpoint's stored threshold")
    ap.add_argument("--seed", type=int, default=0, help="seed of the perturbations (noise, crop positions)")
    ap.add_argument("--perturbations", default=None,
                    help="name=strength,... in place of the default set (data.stress.perturbations), "
                         "e.g. 'noise=0.06,blur=2,jpeg=15'")
    ap.add_argument("--json", type=Path, default=None, help="also write every result to this JSON file")
    args = ap.parse_args(argv)

    from pneumonia.data.datamodule import ChestXrayDataModule
    from pneumonia.data.stress import validation_images
    from pneumonia.evaluation.stress import stress_metrics
    from pneumonia.inference import Predictor

    results = {}
    try:
        chosen = None
        if args.perturbations:
            chosen = {}
            for item in args.perturbations.split(","):
                name, _, value = item.partition("=")
                try:
                    chosen[name.strip()] = float(value) if "." in value or "e" in value else int(value)
                except ValueError:
                    raise ConfigError(f"--perturbations: {item!r} must be name=number") from None
        for given in args.checkpoints:
            path = Path(given)
            path = path / "checkpoints" / "best.ckpt" if path.is_dir() else path
            predictor = Predictor.from_checkpoint(path, tta={"stored": None, "on": True, "off": False}[args.tta])
            settings = dict(predictor.data_settings)
            settings.update(bad_image_report=None, download=False)
            if args.data_root:
                settings["root"] = args.data_root
            elif not Path(str(settings.get("root"))).expanduser().is_dir():  # stored relative to where it trained
                raise ConfigError(f"{path}: its data root {settings.get('root')!r} is not a folder from here: "
                                  "run from the folder it was trained in, or give --data-root")
            if args.cache_dir:
                settings["cache_dir"] = args.cache_dir
            dm = ChestXrayDataModule(**settings)
            dm.setup("fit")
            images, labels = validation_images(dm.splits["val"])
            results[str(path)] = res = stress_metrics(predictor, images, labels, args.threshold, seed=args.seed,
                                                      perturbations=chosen)
            per = "  ".join(f"{k} {v['auroc']:.4f}" for k, v in res["per_perturbation"].items())
            print(f"{path}: threshold {res['threshold']:.4f}, {len(labels)} images, "
                  f"TTA {'on' if predictor.tta else 'off'}\n"
                  f"  plain  AUROC {res['plain']['auroc']:.4f}  specificity {res['plain']['specificity']:.4f}  "
                  f"sensitivity {res['plain']['recall']:.4f}\n"
                  f"  stress AUROC {res['stress']['auroc']:.4f}  specificity {res['stress']['specificity']:.4f}  "
                  f"sensitivity {res['stress']['recall']:.4f}\n  AUROC per perturbation: {per}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
