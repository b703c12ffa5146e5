"""One training step of the seed CNN on the CPU, compute only: where the time goes, and what
`torch.compile` buys (issue 16 item 5: fp32 on CPUs without native bf16).

    python benchmarks/cpu_step.py                          # the table below, 150 px, batch 64
    python benchmarks/cpu_step.py --profile fp32_cl_rgb    # + the PyTorch profiler's top ops of one variant
    # the Keras peer first, in the same sitting, then ours; the table to docs/results/cpu_step_avx2.json
    python benchmarks/cpu_step.py --keras /path/to/tf-venv/bin/python keras_seed_cnn.py <data>/train \
        --keras-onednn --variants fp32_nchw_rgb fp32_cl_rgb fp32_cl_gray fp32_cl_gray_compile --write cpu_step_avx2

Each variant runs the project's network (`pneumonia.models.CustomCNN`, the seed's 5 blocks,
dense 256) through forward, BCE loss, backward and an Adam step on one fixed random batch,
as `benchmarks/throughput.py` does end to end and the Keras peer's "compute only" figure
does (`../shared/peers/keras_seed_cnn.py`, `train_on_batch` on a fixed tensor batch).
`compile` variants use `torch.compile` (inductor, C++ codegen: fuses the ReLUs, the
pointwise backward ops and the optimizer step; the first steps compile, a minute or two on
2 cores, and are not timed). Images/s: median of `--repeats` windows of `--steps` steps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_result  # noqa: E402

# name -> (channels, channels_last, autocast bf16, compile)
LABELS = {
    "fp32_nchw_rgb": "ours, fp32, NCHW, RGB",
    "fp32_cl_rgb": "ours, fp32, channels_last, RGB",
    "fp32_cl_rgb_compile": "ours, fp32, channels_last, RGB, `torch.compile`",
    "fp32_cl_gray": "ours, fp32, channels_last, gray (`train.py`'s path where bf16 is not native)",
    "fp32_cl_gray_compile": "ours, fp32, channels_last, gray, `torch.compile`",
    "fp32_cl_gray_split": "ours, fp32, channels_last, gray, batch split over the threads (`module.split_batch`)",
    "bf16_cl_gray": "ours, bf16-mixed, channels_last, gray",
    "bf16_cl_gray_compile": "ours, bf16-mixed, channels_last, gray, `torch.compile`",
}
VARIANTS = {
    "fp32_nchw_rgb": (3, False, False, False),
    "fp32_cl_rgb": (3, True, False, False),
    "fp32_cl_rgb_compile": (3, True, False, True),
    "fp32_cl_gray": (1, True, False, False),
    "fp32_cl_gray_compile": (1, True, False, True),
    "fp32_cl_gray_split": (1, True, False, False),
    "bf16_cl_gray": (1, True, True, False),
    "bf16_cl_gray_compile": (1, True, True, True),
}


def step_fn(name: str, size: int, batch: int):
    import torch

    from pneumonia.models import CustomCNN

    channels, channels_last, bf16, compiled = VARIANTS[name]
    torch.manual_seed(0)
    net = CustomCNN(depth=5, in_channels=channels, image_size=size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt).train()
    if name.endswith("_split"):  # what PneumoniaClassifier.on_fit_start sets (module.split_batch)
        net.split_workers = torch.get_num_threads()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch, channels, size, size).contiguous(memory_format=fmt)
    y = (torch.rand(batch) > 0.5).float()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(x).reshape(-1).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return torch.compile(step) if compiled else step


def run_one(name: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads) if args.threads else None
    step = step_fn(name, args.size, args.batch)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        float(step())
    warm = time.perf_counter() - t0
    rates = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        float(loss)
        rates.append(args.steps * args.batch / (time.perf_counter() - t))
    result = {
        "variant": name,
        "img_s": statistics.median(rates),
        "rates": rates,
        "warmup_s": warm,
        "threads": torch.get_num_threads(),
    }
    if args.profile == name:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                float(step())
        result["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
    return result


def run_keras(python: str, script: str, data: str, args: argparse.Namespace, onednn: bool | None) -> dict:
    """The Keras peer's SUMMARY line (`train_compute`, `e2e_fit` images/s) in a fresh process;
    `onednn` sets TF_ENABLE_ONEDNN_OPTS (TensorFlow turns oneDNN on by itself only on some CPUs)."""
    env = dict(os.environ)
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = "1" if onednn else "0"
    cmd = [python, script, data, "--batch", str(args.batch), "--size", str(args.size), "--steps", "10"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    found = re.search(r"SUMMARY .*train_compute=([\d.]+) e2e_fit=([\d.]+)", out.stdout)
    if out.returncode != 0 or not found:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: the Keras peer failed ({' '.join(cmd)}): {tail[:200]}")
    versions = re.search(r"^TF (\S+)", out.stdout, re.M)
    mkl = re.search(r"IsMklEnabled: (\S+)", out.stdout)
    return {
        "train": float(found.group(1)),
        "fit": float(found.group(2)),
        "tf": versions.group(1) if versions else "?",
        "onednn": onednn,
        "mkl": mkl.group(1) if mkl else "?",
        "stdout": out.stdout,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--profile", choices=list(VARIANTS), default=None)
    ap.add_argument(
        "--keras",
        nargs=3,
        metavar=("PYTHON", "SCRIPT", "TRAIN_DIR"),
        help="run the Keras peer (its venv's python, keras_seed_cnn.py, a train/ folder) first, same sitting",
    )
    ap.add_argument(
        "--keras-onednn", action="store_true", help="run the peer a second time with TF_ENABLE_ONEDNN_OPTS=1"
    )
    ap.add_argument("--write", metavar="NAME", help="write the table to docs/results/NAME.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    from pneumonia.hardware import cpu_has_native_bf16

    print(f"seed CNN, {args.size} px, batch {args.batch}, native bf16: {cpu_has_native_bf16()}")
    rows: list[list[object]] = []
    peers: list[dict] = []
    if args.keras:
        for onednn in [None, True] if args.keras_onednn else [None]:
            k = run_keras(*args.keras, args, onednn)
            peers.append({key: value for key, value in k.items() if key != "stdout"})
            how = "TF_ENABLE_ONEDNN_OPTS=1" if onednn else f"TensorFlow's default (oneDNN: {k['mkl']})"
            label = f"Keras (TensorFlow {k['tf']}), fp32, RGB, {how}: `train_on_batch`"
            rows.append([label, k["train"], f"end to end `model.fit(flow_from_directory)`: {k['fit']}"])
            print(f"| {label} | {k['train']:.1f} | fit {k['fit']:.1f} |", flush=True)
    print("| variant | train img/s (compute only) | first steps (s) |")
    print("|---|---|---|")
    profile = ""
    for name in args.variants:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--size",
            str(args.size),
            "--batch",
            str(args.batch),
            "--warmup",
            str(args.warmup),
            "--steps",
            str(args.steps),
            "--repeats",
            str(args.repeats),
        ]
        cmd += (["--threads", str(args.threads)] if args.threads else []) + (
            ["--profile", args.profile] if args.profile else []
        )
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1][:120]} | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['img_s']:.1f} | {r['warmup_s']:.1f} |", flush=True)
        rows.append([LABELS[name], round(r["img_s"], 1), f"first {args.warmup} steps {r['warmup_s']:.1f} s"])
        if "profile" in r:
            print(r["profile"])
            profile = r["profile"]
    if args.write:
        import torch

        write_result(
            args.write,
            title=(
                f"One training step, compute only: forward, loss, backward and optimizer step on a fixed "
                f"batch of {args.batch} at {args.size} px (median of {args.repeats} windows of {args.steps} steps)"
            ),
            columns=["path", "train img/s", "note"],
            rows=rows,
            notes=(
                f"torch {torch.__version__.split('+')[0]}, threads {torch.get_num_threads()}; one process per "
                "variant, run back to back with nothing else running; the Keras peer is "
                "../shared/peers/keras_seed_cnn.py (not in this repository), in its own venv"
            ),
            extra={"keras": peers, **({"profile": profile} if args.profile else {})},
        )


if __name__ == "__main__":
    main()
