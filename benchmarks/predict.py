"""Prediction throughput: `predict.py` on a folder of images, with and without Grad-CAM.

    python benchmarks/predict.py --ckpt outputs/<run>/checkpoints/best.ckpt \\
        --data data/chest_xray/train [--tta off]

Three numbers, each after a warm-up on the first batches:
1. `predict.py` end to end (decode in threads, preprocess, score, write predictions.csv) on
   every image under --data: images/s.
2. Grad-CAM against the plain forward pass on the same decoded batches (batch --batch-size):
   the cost ratio, and each one's images/s over all of them (--batches 0, the default) or
   the first --batches batches. Short runs flatter: on a shared 2-core VM the first batches
   run up to 2x faster than the steady state.
3. `predict.py explain=true` end to end on the first --explain-images images: images/s
   (this includes drawing and writing one heatmap PNG per image).
With test-time augmentation (the recipe's `data.tta`, or --tta on) every number counts the
image once, though the network runs on 7 variants of it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_predict(ckpt: str, inputs: str, out: Path, *overrides: str) -> float:
    """Seconds `predict(cfg)` takes (the Predictor load included, Python start-up not)."""
    from pneumonia.config.compose import compose
    from pneumonia.runners.predict import predict

    from pneumonia.config.entry import hydra_override

    inputs = f"inputs={inputs}" if inputs.startswith("[") else hydra_override("inputs", inputs)
    cfg = compose("predict", [hydra_override("ckpt_path", ckpt), inputs, "print_rows=0", *overrides], out)
    t0 = time.perf_counter()
    summary = predict(cfg)
    seconds = time.perf_counter() - t0
    assert summary["n"] > 0
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", default="data/chest_xray/train")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=0, help="0 = every batch of --data")
    ap.add_argument("--explain-images", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--tta",
        choices=("stored", "on", "off"),
        default="stored",
        help="test-time augmentation: as the checkpoint's recipe says (data.tta), or forced on/off",
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    from pneumonia.data.folder import walk_images
    from pneumonia.errors import UserError
    from pneumonia.inference import Predictor

    tta = {"stored": None, "on": True, "off": False}[args.tta]
    try:
        files = walk_images(args.data)
        predictor = Predictor.from_checkpoint(args.ckpt, device=args.device, tta=tta)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pneumonia-bench-predict-") as folder:  # CSVs and heatmaps: removed
        measure(args, files, predictor, Path(folder))
    return 0


def measure(args: argparse.Namespace, files: list, predictor, tmp: Path) -> None:
    import numpy as np
    import torch

    from pneumonia.explain.gradcam import gradcam

    device = [f"device={args.device}", *([] if args.tta == "stored" else [f"tta={args.tta == 'on'}".lower()])]
    print(
        f"{len(files)} images under {args.data}; checkpoint {args.ckpt}; precision {predictor.precision}; "
        f"device {predictor.device}; tta {predictor.tta}; {torch.get_num_threads()} torch threads, {os.cpu_count()} cores"
    )

    # 1. predict.py end to end (a short warm-up run first: imports, first-call costs)
    run_predict(args.ckpt, files[0], tmp / "warmup", *device)
    seconds = run_predict(args.ckpt, args.data, tmp / "plain", f"batch_size={args.batch_size}", *device)
    plain_rate = len(files) / seconds
    print(f"predict.py, {len(files)} images: {seconds:.1f} s, {plain_rate:.1f} img/s")

    # 2. Grad-CAM vs the forward pass on identical decoded batches (decoded before timing)
    n_batches = args.batches or -(-len(files) // args.batch_size)
    batches = [
        torch.from_numpy(
            np.stack([predictor.preprocess.load(p) for p in files[b * args.batch_size : (b + 1) * args.batch_size]])
        )
        for b in range(n_batches + 1)
        if files[b * args.batch_size : (b + 1) * args.batch_size]
    ]
    sync = torch.cuda.synchronize if predictor.device.type == "cuda" else (lambda: None)
    forward_s, cam_s = 0.0, 0.0
    for b, images in enumerate(batches):
        t0 = time.perf_counter()
        probs = predictor.predict_images(images)
        sync()
        t1 = time.perf_counter()
        x = predictor.preprocess.to_input(images).to(predictor.device)
        with predictor.autocast():  # as predict.py does: the checkpoint's scoring precision
            gradcam(predictor.net, x, threshold=predictor.threshold, decisions=predictor.decide(probs))
        sync()
        t2 = time.perf_counter()
        if b:  # the first batch is the warm-up
            forward_s += t1 - t0
            cam_s += t2 - t1
    n_timed = sum(len(b) for b in batches[1:])
    fwd, cam = n_timed / forward_s, n_timed / cam_s
    print(
        f"{n_timed} images in batches of {args.batch_size}: forward {fwd:.0f} img/s, Grad-CAM {cam:.0f} img/s: "
        f"Grad-CAM costs {fwd / cam:.2f}x the forward pass"
    )

    # 3. predict.py explain=true on a subset (one PNG per image)
    chosen = files[: args.explain_images]
    inputs = "[" + ",".join(f"'{p}'" for p in chosen) + "]"
    seconds = run_predict(args.ckpt, inputs, tmp / "explain", "explain=true", f"batch_size={args.batch_size}", *device)
    print(
        f"predict.py explain=true, {len(chosen)} images: {seconds:.1f} s, {len(chosen) / seconds:.1f} img/s "
        f"(heatmap PNGs included)"
    )
    print(
        f"\n| measure | value |\n|---|---|\n| `predict.py` ({len(files)} images) | {plain_rate:.0f} img/s |\n"
        f"| forward pass alone, batch {args.batch_size} | {fwd:.0f} img/s |\n"
        f"| Grad-CAM alone, batch {args.batch_size} | {cam:.0f} img/s ({fwd / cam:.2f}x the forward's cost) |\n"
        f"| `predict.py explain=true` ({len(chosen)} images, PNGs written) | {len(chosen) / seconds:.1f} img/s |"
    )


if __name__ == "__main__":
    sys.exit(main())
