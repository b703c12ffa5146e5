"""Datasets larger than memory: the memory-mapped decoded cache on a synthetic folder.

    python benchmarks/scale.py --n 100000 --size 224          # build, cache, train from it
    python benchmarks/scale.py --n 100000 --size 224 --real data/chest_xray

1. Writes `--n` small synthetic JPEGs (the size of the Kaggle ones, `--size` px, gray) into
   `--folder` (kept for the next run), timing it.
2. Builds the decoded cache through the DataModule (as `train.py` does): images/s, size on disk.
3. Trains the default CNN for `--steps` batches straight from the memory-mapped cache, sampling
   the process' memory every 0.2 s: peak anonymous RSS (the process' own memory) and peak
   file-backed RSS (cache pages mapped in, which the OS drops under memory pressure).
4. With `--real`, the same training on the real training split with the cache in memory
   (`data.cache_dir=null`), for the images/s of the two paths on one machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def rss_mb() -> tuple[float, float]:
    """(anonymous, file-backed) resident memory of this process, MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["RssAnon"].split()[0]) / 1024, int(fields["RssFile"].split()[0]) / 1024


class Sampler:
    def __init__(self) -> None:
        self.peak_anon = self.peak_file = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            anon, file = rss_mb()
            self.peak_anon, self.peak_file = max(self.peak_anon, anon), max(self.peak_file, file)
            time.sleep(0.2)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _write(args: tuple[str, int, int, int]) -> None:
    from PIL import Image

    folder, start, stop, size = args
    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = 90 + 60 * np.exp(-((xx - 0.5) ** 2) / 0.08)
    for i in range(start, stop):
        pneumonia = i % 4 != 0  # about the Kaggle balance
        img = body + rng.normal(0, 12, (size, size))
        if pneumonia:
            cx, cy = rng.choice([0.3, 0.7]), rng.uniform(0.45, 0.65)
            img += 120 * np.exp(-(((xx - cx) ** 2) + ((yy - cy) ** 2)) / 0.04)
        cls = "PNEUMONIA" if pneumonia else "NORMAL"
        name = f"person{i}_bacteria_{i}.jpeg" if pneumonia else f"IM-{i:06d}-0001.jpeg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(
            Path(folder) / "train" / cls / name, quality=85
        )


def make_folder(folder: Path, n: int, size: int) -> float:
    marker = folder / f".complete-{n}-{size}"
    if marker.exists():
        return 0.0
    shutil.rmtree(folder, ignore_errors=True)
    for cls in ("NORMAL", "PNEUMONIA"):
        (folder / "train" / cls).mkdir(parents=True)
    t0 = time.perf_counter()
    step = 2000
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write, [(str(folder), s, min(s + step, n), size) for s in range(0, n, step)]))
    marker.touch()
    return time.perf_counter() - t0


def train_rate(root: str, size: int, steps: int, cache_dir: str | None, batch: int) -> tuple[float, Sampler]:
    import lightning as L
    import torch

    from pneumonia.config.compose import compose
    from pneumonia.config.instantiate import instantiate
    from pneumonia.runners.checks import build_module
    from pneumonia.runners.train import balance_pos_weight

    cfg = compose(
        "train",
        [
            f"data.root={root}",
            f"data.image_size={size}",
            f"data.batch_size={batch}",
            f"data.cache_dir={cache_dir}" if cache_dir else "data.cache_dir=null",
            "logger=none",
            "callbacks=none",
            "scheduler=none",
            "trainer.max_epochs=1",
            f"trainer.limit_train_batches={steps}",
            "trainer.limit_val_batches=0",
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "+trainer.enable_checkpointing=false",
        ],
        "/tmp/pneumonia-scale-run",
    )
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    module = build_module(cfg, pretrained=False)
    balance_pos_weight(cfg, module, dm)
    times: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *a, **k):
            times.append(time.perf_counter())

    trainer = instantiate(cfg.trainer, logger=False, callbacks=[Clock()])
    with Sampler() as sampler:
        trainer.fit(module, datamodule=dm)
    warm = 5
    rate = (len(times) - 1 - warm) * batch / (times[-1] - times[warm])
    del torch
    return rate, sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=60, help="training batches timed (after 5 warm-up batches)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--folder", default="/tmp/pneumonia-scale")
    ap.add_argument("--cache-dir", default="/tmp/pneumonia-scale-cache")
    ap.add_argument("--real", help="a data root with the real train/ split, for the in-memory comparison")
    args = ap.parse_args()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

    folder = Path(args.folder)
    seconds = make_folder(folder, args.n, args.size)
    print(
        f"{args.n} synthetic {args.size} px JPEGs in {folder}: "
        + (f"written in {seconds:.0f} s" if seconds else "already there"),
        flush=True,
    )

    from pneumonia.data.datamodule import ChestXrayDataModule

    shutil.rmtree(args.cache_dir, ignore_errors=True)
    dm = ChestXrayDataModule(root=str(folder), image_size=args.size, channels=1, cache_dir=args.cache_dir)
    t0 = time.perf_counter()
    with Sampler() as build:
        dm.setup("fit")
    seconds = time.perf_counter() - t0
    cache_bytes = sum(f.stat().st_blocks * 512 for f in Path(args.cache_dir).rglob("*") if f.is_file())
    print(
        f"cache build: {seconds:.0f} s, {args.n / seconds:.0f} img/s, {cache_bytes / 1e9:.2f} GB on disk, "
        f"peak RSS anon {build.peak_anon:.0f} MB / file {build.peak_file:.0f} MB",
        flush=True,
    )
    del dm

    rate, s = train_rate(str(folder), args.size, args.steps + 6, args.cache_dir, args.batch_size)
    print(
        f"training from the memory-mapped cache ({args.n} images): {rate:.1f} img/s, peak RSS anon "
        f"{s.peak_anon:.0f} MB / file-backed {s.peak_file:.0f} MB",
        flush=True,
    )
    if args.real:
        rate, s = train_rate(args.real, args.size, args.steps + 6, None, args.batch_size)
        print(
            f"training from the in-memory cache (real train split): {rate:.1f} img/s, peak RSS anon "
            f"{s.peak_anon:.0f} MB / file-backed {s.peak_file:.0f} MB",
            flush=True,
        )


if __name__ == "__main__":
    main()
