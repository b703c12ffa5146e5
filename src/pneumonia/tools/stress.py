"""`python -m pneumonia.tools.stress CKPT [CKPT ...]`: stress validation of checkpoints on
their own validation split (rebuilt from their data settings), plain and under the
acquisition changes of `pneumonia.data.stress`, at their stored thresholds: AUROC,
specificity and sensitivity per perturbation, then the worst case (the minimum AUROC over the
perturbations), and with several checkpoints their ranking by that worst case."""

from __future__ import annotations

from pneumonia.errors import ConfigError, UserError


def main(argv: list[str] | None = None) -> None:
    """python -m pneumonia.tools.stress CKPT [CKPT ...]: plain and stress validation metrics of
    each checkpoint, on its own validation split, at its stored threshold."""
    import argparse
    import json
    import sys
    from pathlib import Path

    ap = argparse.ArgumentParser(
        prog="python -m pneumonia.tools.stress",
        description="Stress validation of checkpoints: their validation split (rebuilt from "
        "their data settings) plain and under acquisition changes.",
    )
    ap.add_argument("checkpoints", nargs="+", help="best.ckpt files (or run folders holding checkpoints/best.ckpt)")
    ap.add_argument("--data-root", default=None, help="data.root (default: the one stored in each checkpoint)")
    ap.add_argument("--cache-dir", default=None, help="decoded image cache (default: the one stored)")
    ap.add_argument(
        "--tta",
        choices=("stored", "on", "off"),
        default="stored",
        help="test-time augmentation: as the checkpoint's recipe says (stored), or forced on/off",
    )
    ap.add_argument("--threshold", type=float, default=None, help="default: each checkpoint's stored threshold")
    ap.add_argument("--seed", type=int, default=0, help="seed of the perturbations (noise, crop positions)")
    ap.add_argument(
        "--set",
        dest="perturbation_set",
        choices=("standard", "shortcut", "all", "dicom"),
        default="standard",
        help="which perturbations: standard (the acquisition changes of data.stress, the default), "
        "shortcut (composed, marker, border, fov, apex, costophrenic), all of them, or dicom (the DICOM "
        "path: a 12-bit file with a clinical window read back by the project's reader; needs pydicom)",
    )
    ap.add_argument(
        "--perturbations",
        default=None,
        help="name=strength,... in place of --set, e.g. 'noise=0.06,blur=2,jpeg=15,marker=0.2'",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write every result to this JSON file")
    args = ap.parse_args(argv)

    from pneumonia.data.datamodule import ChestXrayDataModule
    from pneumonia.data.stress import PERTURBATION_SETS, validation_images
    from pneumonia.evaluation.stress import stress_metrics
    from pneumonia.inference import Predictor

    results = {}
    try:
        chosen = dict(PERTURBATION_SETS[args.perturbation_set])
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
                raise ConfigError(
                    f"{path}: its data root {settings.get('root')!r} is not a folder from here: "
                    "run from the folder it was trained in, or give --data-root"
                )
            if args.cache_dir:
                settings["cache_dir"] = args.cache_dir
            dm = ChestXrayDataModule(**settings)
            dm.setup("fit")
            images, labels = validation_images(dm.splits["val"])
            results[str(path)] = res = stress_metrics(
                predictor, images, labels, args.threshold, seed=args.seed, perturbations=chosen
            )
            print(
                f"{path}: threshold {res['threshold']:.4f}, {len(labels)} images, "
                f"TTA {'on' if predictor.tta else 'off'}\n{stress_table(res)}"
            )
        if len(results) > 1:
            print("\nRanked by the worst-case AUROC over the perturbations (then the pooled stress AUROC):")
            ranked = sorted(
                results.items(), key=lambda kv: (-_num(kv[1]["worst"]["auroc"]), -_num(kv[1]["stress"]["auroc"]))
            )
            for rank, (name, res) in enumerate(ranked, 1):
                worst = res["worst"]
                print(
                    f"  {rank}. worst AUROC {_fmt(worst['auroc'])} ({worst['auroc_perturbation']})  "
                    f"stress AUROC {_fmt(res['stress']['auroc'])}  plain AUROC {_fmt(res['plain']['auroc'])}  "
                    f"{name}"
                )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _num(x: float | None) -> float:
    return float("-inf") if x is None or x != x else float(x)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.4f}"


def stress_table(res: dict) -> str:
    """`stress_metrics`'s result as a table: plain, each perturbation, pooled, worst case."""
    rows = [("plain", "", res["plain"])]
    rows += [(name, f"{res['perturbations'][name]:g}", m) for name, m in res["per_perturbation"].items()]
    rows.append(("stress (pooled)", "", res["stress"]))
    width = max(len(r[0]) for r in rows + [("worst case", "", {})])
    lines = [f"  {'perturbation':<{width}}  {'strength':>8}  {'AUROC':>6}  {'specificity':>11}  {'sensitivity':>11}"]
    for name, strength, m in rows:
        lines.append(
            f"  {name:<{width}}  {strength:>8}  {_fmt(m['auroc']):>6}  {_fmt(m['specificity']):>11}  "
            f"{_fmt(m['recall']):>11}"
        )
    worst = res["worst"]
    lines.append(
        f"  {'worst case':<{width}}  {'':>8}  {_fmt(worst['auroc']):>6}  {_fmt(worst['specificity']):>11}  "
        f"{_fmt(worst['sensitivity']):>11}   (minima over the perturbations: AUROC at "
        f"{worst['auroc_perturbation']}, specificity at {worst['specificity_perturbation']}, "
        f"sensitivity at {worst['sensitivity_perturbation']})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
