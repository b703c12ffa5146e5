"""Training and evaluation throughput of the custom CNN through the project's own code path.

    python benchmarks/throughput.py --baseline            # all variants + the plain baseline
    python benchmarks/throughput.py --variants default    # just train.py's defaults

Each variant runs in its own subprocess (so its peak RSS is its own) with the project's
DataModule, LightningModule and a Lightning Trainer built from conf/ exactly as train.py
builds them. `--baseline` adds the plain pipeline: torchvision ImageFolder + PIL
transforms per sample (v2 RandomAffine with the seed's shear/zoom, flip), DataLoader
workers, fp32, NCHW, RGB, on the same model and data. Throughput is measured after
`--warmup` steps over `--repeats` windows of `--steps` steps; medians are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (description, overrides of conf/train.yaml)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "cached_fp32_nchw_rgb": (
        "decoded cache + batch aug, fp32, NCHW, RGB",
        ["trainer.precision=32-true", "module.channels_last=false", "model.in_channels=3"],
    ),
    "cached_fp32_cl_rgb": ("+ channels_last", ["trainer.precision=32-true", "model.in_channels=3"]),
    "default": ("+ grayscale input, precision auto (train.py defaults)", []),
    "bf16_cl_gray": ("defaults with trainer.precision=bf16-mixed", ["trainer.precision=bf16-mixed"]),
    "fp32_cl_gray": (
        "grayscale, channels_last, fp32 (the default path without native bf16)",
        ["trainer.precision=32-true"],
    ),
    "fp32_cl_gray_nosplit": (
        "grayscale, channels_last, fp32, module.split_batch=false (the batch not split over threads)",
        ["trainer.precision=32-true", "module.split_batch=false"],
    ),
    "fp32_cl_gray_compile": (
        "+ module.compile=true (torch.compile)",
        ["trainer.precision=32-true", "module.compile=true"],
    ),
}
DEFAULT_VARIANTS = ["cached_fp32_nchw_rgb", "cached_fp32_cl_rgb", "default"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """Lightning callback recording the wall time at the end of every train/val batch."""

    def __new__(cls):
        import lightning as L

        class _Clock(L.Callback):
            def __init__(self):
                self.train, self.val = [], []

            def on_train_batch_end(self, *a, **k):
                self.train.append(time.perf_counter())

            def on_validation_batch_end(self, *a, **k):
                self.val.append(time.perf_counter())

        return _Clock()


def windows(times: list[float], batch: int, warmup: int, steps: int, repeats: int) -> list[float]:
    rates = []
    for r in range(repeats):
        start, stop = warmup + r * steps - 1, warmup + (r + 1) * steps - 1
        rates.append(steps * batch / (times[stop] - times[start]))
    return rates


def run_variant(name: str, args: argparse.Namespace) -> dict:
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from pneumonia.config.compose import compose
    from pneumonia.runners.common import configure_torch
    from pneumonia.runners.checks import build_module
    from pneumonia.runners.train import balance_pos_weight

    overrides = [] if name == "baseline" else VARIANTS[name][1]
    if name == "baseline":
        overrides = ["trainer.precision=32-true", "module.channels_last=false", "model.in_channels=3"]
    out = Path(args.tmp) / name
    cfg = compose(
        "train",
        [
            f"data.root={args.data}",
            f"data.image_size={args.image_size}",
            f"data.batch_size={args.batch_size}",
            f"data.cache_dir={args.cache_dir}",
            "logger=none",
            "callbacks=none",
            *overrides,
        ],
        out,
    )
    configure_torch(cfg.get("threads"))
    L.seed_everything(0, verbose=False)
    t0 = time.perf_counter()
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    prepare_s = time.perf_counter() - t0
    module = build_module(cfg, pretrained=False)
    balance_pos_weight(cfg, module, dm)
    n_train = args.warmup + args.steps * args.repeats
    n_val = 1 + args.eval_steps
    clock = Clock()
    trainer = instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[clock],
        max_epochs=1,
        limit_train_batches=n_train,
        limit_val_batches=n_val,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    if name == "baseline":
        train_loader, val_loader = baseline_loaders(args, dm)
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    else:
        dm.hparams.eval_batch_size = args.eval_batch_size
        trainer.fit(module, datamodule=dm)
    train_rates = windows(clock.train, args.batch_size, args.warmup, args.steps, args.repeats)
    val_times = clock.val
    eval_rate = (len(val_times) - 1) * args.eval_batch_size / (val_times[-1] - val_times[0])
    train_rate = statistics.median(train_rates)
    return {
        "variant": name,
        "precision": str(cfg.trainer.precision),
        "train_img_s": train_rate,
        "train_runs": train_rates,
        "eval_img_s": eval_rate,
        "epoch_s": 5216 / train_rate,
        "prepare_s": prepare_s,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


def baseline_loaders(args: argparse.Namespace, dm):
    """The plain pipeline: ImageFolder + per-sample PIL transforms + DataLoader workers."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    size = (args.image_size, args.image_size)
    train_tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(size, antialias=True),
            v2.RandomAffine(degrees=0, shear=0.2, scale=(0.8, 1.2)),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    eval_tf = v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.ToDtype(torch.float32, scale=True)])

    class WithIndex(torch.utils.data.Dataset):
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            x, y = self.ds[i]
            return x, y, i

    train_dir = Path(args.data) / "train"
    train_idx = dm.splits["train"].indices.tolist()
    val_idx = dm.splits["val"].indices.tolist()
    train_ds = WithIndex(Subset(ImageFolder(train_dir, transform=train_tf, loader=_pil_rgb), train_idx))
    val_ds = WithIndex(Subset(ImageFolder(train_dir, transform=eval_tf, loader=_pil_rgb), val_idx))
    kw = {"num_workers": args.workers, "persistent_workers": args.workers > 0}
    return (
        DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, **kw),
        DataLoader(val_ds, batch_size=args.eval_batch_size, **kw),
    )


def _pil_rgb(path: str):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/chest_xray")
    ap.add_argument("--image-size", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--eval-batch-size", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eval-steps", type=int, default=2, help="timed validation batches (after one warm-up)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    ap.add_argument("--baseline", action="store_true", help="also run the plain per-sample pipeline")
    ap.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache" / "images"))
    ap.add_argument("--tmp", default="/tmp/pneumonia-bench")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = ap.parse_args()
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    # Lightning and torch chatter would bury the table
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    if args.one:
        print("RESULT " + json.dumps(run_variant(args.one, args)), flush=True)
        return

    names = (["baseline"] if args.baseline else []) + args.variants
    results = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name] + [a for a in sys.argv[1:] if a != "--baseline"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"variant {name} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(line[7:])
        results.append(res)
        print(
            f"{name} ({res['precision']}): train {res['train_img_s']:.1f} img/s (windows {[round(r, 1) for r in res['train_runs']]}), "
            f"eval {res['eval_img_s']:.1f} img/s, peak RSS {res['peak_rss_mb']:.0f} MB",
            flush=True,
        )

    base = next((r for r in results if r["variant"] == "baseline"), None)
    print(
        f"\nimage {args.image_size} px, batch {args.batch_size}, {results[0]['threads']} threads; "
        f"epoch = 5216 training images"
    )
    print("| variant | train img/s | eval img/s | train vs baseline | epoch (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        desc = (
            VARIANTS[r["variant"]][0]
            if r["variant"] in VARIANTS
            else f"ImageFolder + PIL per sample, {args.workers} workers, fp32, NCHW, RGB"
        )
        ratio = f"{r['train_img_s'] / base['train_img_s']:.2f}x" if base else "-"
        print(
            f"| `{r['variant']}`: {desc} | {r['train_img_s']:.1f} | {r['eval_img_s']:.1f} | {ratio} | "
            f"{r['epoch_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
