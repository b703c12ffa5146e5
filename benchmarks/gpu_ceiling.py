"""The ceiling for the original CNN on one GPU: the bare network, nothing of the framework.

The seed notebook's CustomCNN (5 blocks, 150 px, grayscale: the default path's input),
synthetic uint8 images resident on the device, a batch gathered there by random indices,
/255, channels_last, bf16 autocast, BCE, Adam. Train and eval images/s at each batch size,
eager and `torch.compile` (default mode and `reduce-overhead` = CUDA graphs); warm-up
excluded, `torch.cuda.synchronize()` around each timed window, the median of the windows.

    python benchmarks/gpu_ceiling.py                       # on a GPU: writes docs/results/gpu_ceiling.json
    python benchmarks/gpu_ceiling.py --out-dir $OUT        # the GPU suite (benchmarks/gpu_suite.sh)
    python benchmarks/gpu_ceiling.py --smoke               # a few steps on the CPU, tiny sizes (checks the script)

The JSON is rewritten after every configuration, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_result  # noqa: E402

from pneumonia.models.custom_cnn import CustomCNN  # noqa: E402

COLUMNS = ["batch", "variant", "train img/s", "eval img/s", "train ms/step", "windows", "compile s"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        g = torch.Generator(device="cpu").manual_seed(0)
        n, s = args.images, args.size
        self.images = torch.randint(0, 256, (n, 1, s, s), dtype=torch.uint8, generator=g).to(device)
        self.labels = torch.randint(0, 2, (n,), generator=g).to(device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def batch(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self.images), (b,), device=self.device)
        x = self.images[idx].float().div_(255).contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx].float()

    def build(self, variant: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        net = CustomCNN(in_channels=1, image_size=self.args.size).to(self.device).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        run = net
        if variant != "eager":
            # one model per variant for every batch size: compiled with a symbolic batch size from the
            # start (2 compiles per variant, train and eval, instead of 6 static ones); --static compiles
            # each batch size on its own (slower to run: the compiles take tens of seconds each)
            run = torch.compile(
                net, mode=None if variant == "compile" else variant, dynamic=False if self.args.static else True
            )
        return net, run, opt

    def train_step(self, net, run, opt, b):
        x, y = self.batch(b)
        with self.autocast:
            logits = run(x).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def eval_step(self, run, b):
        x, _ = self.batch(b)
        with torch.no_grad(), self.autocast:
            torch.sigmoid(run(x).float())

    def timed(self, step, b: int) -> tuple[float, float, int]:
        """(images/s median, ms per step median, windows): warm-up, then windows sized to about
        `--window` seconds each from a synced estimate."""
        a = self.args
        for _ in range(a.warmup):
            step()
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(3):
            step()
        sync(self.device)
        per_step = max((time.perf_counter() - t0) / 3, 1e-5)
        steps = max(a.min_steps, int(a.window / per_step))
        rates, ms = [], []
        for _ in range(a.windows):
            sync(self.device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync(self.device)
            dt = time.perf_counter() - t0
            rates.append(steps * b / dt)
            ms.append(1000 * dt / steps)
        return statistics.median(rates), statistics.median(ms), len(rates)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["eager", "compile", "reduce-overhead"],
        help="eager, compile (torch.compile default mode), reduce-overhead (CUDA graphs), max-autotune",
    )
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--images", type=int, default=8192, help="synthetic images resident on the device")
    ap.add_argument("--precision", choices=["bf16", "32"], default="bf16")
    ap.add_argument("--warmup", type=int, default=8, help="untimed steps first (compiles, CUDA graph capture)")
    ap.add_argument("--window", type=float, default=0.5, help="seconds per timed window")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--min-steps", type=int, default=5)
    ap.add_argument("--static", action="store_true", help="compile static shapes: a new model per batch size")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, a few steps: checks the script only")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.size, args.images, args.batches = "cpu", 80, 64, [4, 8]
        args.warmup, args.window, args.windows, args.min_steps = 1, 0.01, 2, 1
        args.variants = ["eager"]
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bench = Bench(args, device)
    rows, failures, compile_s = [], [], {}

    def save() -> None:
        write_result(
            "gpu_ceiling",
            title=f"The bare original CNN ({args.size} px gray, {args.precision}, channels_last, Adam) on "
            f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'the CPU (smoke)'}",
            columns=COLUMNS,
            rows=rows,
            out_dir=args.out_dir,
            notes=(
                "Synthetic uint8 images resident on the device, each batch gathered there by random indices; "
                "cuDNN benchmark mode on (the framework's trainer.benchmark is false by default); "
                "Adam with torch's default (foreach) implementation; "
                "warm-up excluded, synchronize around each timed window, median of the windows. 'compile s' is "
                "the wall time of the first train and eval steps of a compiled variant (one model per variant "
                "compiled with a symbolic batch size, dynamic=True, so its compiles come at the first batch "
                "size; with --static every batch size compiles its own static graphs)."
                + (" SMOKE RUN: CPU, tiny sizes; not a measurement." if args.smoke else "")
            ),
            extra={
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "images": args.images,
                "failures": failures,
                "settings": {k: v for k, v in vars(args).items() if k != "out_dir"},
            },
        )

    for variant in args.variants:
        built = None
        for b in args.batches:
            name = f"{variant} b{b}"
            try:
                if built is None or (args.static and variant != "eager"):
                    built = None
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    built = bench.build(variant)
                net, run, opt = built
                t0 = time.perf_counter()
                net.train()
                bench.train_step(net, run, opt, b)  # the first step (compiles a compiled variant)
                sync(device)
                first_train = time.perf_counter() - t0
                train_rate, train_ms, windows = bench.timed(
                    lambda net=net, run=run, opt=opt, b=b: bench.train_step(net, run, opt, b), b
                )
                net.eval()
                t0 = time.perf_counter()
                bench.eval_step(run, b)
                sync(device)
                first_eval = time.perf_counter() - t0
                eval_rate, _, _ = bench.timed(lambda run=run, b=b: bench.eval_step(run, b), b)
                compile_s[name] = round(first_train + first_eval, 1)
                rows.append(
                    [
                        b,
                        variant,
                        round(train_rate, 1),
                        round(eval_rate, 1),
                        round(train_ms, 3),
                        windows,
                        compile_s[name] if variant != "eager" else None,
                    ]
                )
                print(
                    f"{name}: train {train_rate:.0f} img/s, eval {eval_rate:.0f} img/s "
                    f"(first steps {first_train + first_eval:.1f} s)",
                    flush=True,
                )
            except Exception as e:  # one configuration failing must not lose the others
                traceback.print_exc()
                failures.append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
            save()
        built = net = run = opt = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not rows:
        raise SystemExit("no configuration ran")


if __name__ == "__main__":
    main()
