"""The framework's training path on a GPU, before and after the fast-path settings, and a
profile of its steps.

Each configuration composes `conf/train.yaml` like `python train.py` (the original CNN at
150 px gray, precision auto = bf16-mixed on a recent GPU), builds the DataModule, the module,
the callbacks and the Lightning Trainer as `runners/train.py` does, and trains; validation,
checkpoints, early stopping, Grad-CAM images and the scheduler are left out (they run once per
epoch, not per step), the progress bar and the finite-loss guard stay. A callback times a
window after the warm-up steps (`torch.cuda.synchronize()` at both ends), epoch ends included.

Configurations, NAME:BATCH:
    before           today's settings on CUDA: data.device_resident=false module.defer_sync=false
    after            data.device_resident=true module.defer_sync=true (the defaults' `auto` on a GPU)
    after_compile    after + module.compile=true
    after_ro         after + module.compile=reduce-overhead (CUDA graphs)
    after_bench      after + trainer.benchmark=true (cuDNN picks its convolution algorithms by timing them)

    python benchmarks/gpu_framework.py --data data/chest_xray --configs before:64 after:64 after_compile:64
    python benchmarks/gpu_framework.py --data data/chest_xray --profile --configs before:64 after:64
    python benchmarks/gpu_framework.py --smoke                 # CPU, synthetic images, a few steps

Writes gpu_framework.json (or gpu_profile.json with --profile) after every configuration.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_result  # noqa: E402

from pneumonia.runners.checks import check_train_config  # noqa: E402
from pneumonia.config.compose import compose  # noqa: E402
from pneumonia.runners.common import build_callbacks, build_trainer, configure_torch  # noqa: E402
from pneumonia.runners.train import balance_pos_weight  # noqa: E402

SETTINGS = {
    "before": ["data.device_resident=false", "module.defer_sync=false", "module.compile=false"],
    "after": ["data.device_resident=true", "module.defer_sync=true", "module.compile=false"],
    "after_compile": ["data.device_resident=true", "module.defer_sync=true", "module.compile=true"],
    "after_ro": ["data.device_resident=true", "module.defer_sync=true", "module.compile=reduce-overhead"],
    "after_bench": [
        "data.device_resident=true",
        "module.defer_sync=true",
        "module.compile=false",
        "trainer.benchmark=true",
    ],
}
# per-step work only: what runs once per epoch is left out
COMMON = [
    "logger=none",
    "scheduler=none",
    "callbacks.model_checkpoint=null",
    "callbacks.last_checkpoint=null",
    "callbacks.early_stopping=null",
    "callbacks.gradcam=null",
    "callbacks.lr_monitor=null",
    "trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
    "trainer.max_epochs=10000",
    "trainer.min_epochs=0",
    "trainer.enable_model_summary=false",
    # one batch shape: a compiled net would recompile for an epoch's last, smaller batch inside the window
    "data.drop_last=true",
]
SYNC_EVENTS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "aten::item",
    "aten::_local_scalar_dense",
    "cudaMemcpyAsync",
    "aten::copy_",
    "cudaLaunchKernel",
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Window(L.Callback):
    """Times the training steps after `warmup` steps for about `seconds`, then stops the run;
    with `profile_steps`, profiles that many steps instead (torch.profiler)."""

    def __init__(self, warmup: int, seconds: float, profile_steps: int = 0) -> None:
        self.warmup, self.seconds, self.profile_steps = warmup, seconds, profile_steps
        self.steps = self.images = 0
        self.t0: float | None = None
        self.t1: float | None = None
        self.first_step_s: float | None = None
        self.profiler: Any = None
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        device = pl_module.device
        if self.steps == 0:
            self._start = time.perf_counter()
        if self.steps == self.warmup:
            sync(device)
            self.t0 = time.perf_counter()
            if self.profile_steps:
                from torch.profiler import ProfilerActivity, profile

                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
                self.profiler = profile(activities=acts, record_shapes=False)
                self.profiler.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        device = pl_module.device
        self.steps += 1
        if self.steps == 1:
            sync(device)
            self.first_step_s = time.perf_counter() - self._start
        if self.t0 is None:
            return
        self.images += len(batch[0])
        timed = self.steps - self.warmup
        done = timed >= self.profile_steps if self.profile_steps else time.perf_counter() - self.t0 >= self.seconds
        if done:
            sync(device)
            self.t1 = time.perf_counter()
            if self.profiler is not None:
                self.profiler.__exit__(None, None, None)
            trainer.should_stop = True

    @property
    def timed_steps(self) -> int:
        return self.steps - self.warmup

    @property
    def rate(self) -> float | None:
        return self.images / (self.t1 - self.t0) if self.t0 is not None and self.t1 is not None else None


def run_config(args: argparse.Namespace, name: str, batch: int, out: Path, profile_steps: int = 0) -> Window:
    overrides = [
        f"data.root={args.data}",
        f"data.cache_dir={args.cache_dir}",
        f"data.batch_size={batch}",
        *COMMON,
        *SETTINGS[name],
        *args.override,
    ]
    cfg = compose("train", overrides, out)
    start = check_train_config(cfg)  # the DataModule and the module, each built once
    datamodule = start.datamodule
    configure_torch(cfg.get("threads"))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    window = Window(
        args.warmup_compiled if "compile" in name or name.endswith("_ro") else args.warmup, args.seconds, profile_steps
    )
    callbacks = [*build_callbacks(cfg, has_logger=False), window]
    trainer = build_trainer(cfg.trainer, callbacks=callbacks, logger=False)
    datamodule.setup("fit")
    module = start.module
    balance_pos_weight(cfg, module, datamodule)
    trainer.fit(module, datamodule=datamodule)
    window.precision = str(trainer.precision)  # type: ignore[attr-defined]
    return window


def averages(prof: Any, device: bool, top: int) -> tuple[list[list[Any]], dict[str, int]]:
    """Top rows of the profile (by self device time on a GPU, else self CPU time) and the counts
    of the sync-related events."""
    events = prof.key_averages()

    def get(e: Any, *names: str) -> float:
        for n in names:
            if hasattr(e, n):
                return float(getattr(e, n))
        return 0.0

    dev = ("self_device_time_total", "self_cuda_time_total")
    key = (lambda e: get(e, *dev)) if device else (lambda e: get(e, "self_cpu_time_total"))
    rows = []
    for e in sorted(events, key=key, reverse=True)[:top]:
        rows.append(
            [
                e.key[:80],
                int(e.count),
                round(get(e, *dev) / 1000, 3),
                round(get(e, "device_time_total", "cuda_time_total") / 1000, 3),
                round(get(e, "self_cpu_time_total") / 1000, 3),
                round(get(e, "cpu_time_total") / 1000, 3),
            ]
        )
    counts = {e.key: int(e.count) for e in events if e.key in SYNC_EVENTS}
    return rows, counts


def host_rows(prof: Any, top: int) -> list[list[Any]]:
    """The top ops by self CPU time (the host's side of a step): name, calls, self CPU ms."""
    events = sorted(prof.key_averages(), key=lambda e: float(e.self_cpu_time_total), reverse=True)[:top]
    return [[e.key[:80], int(e.count), round(float(e.self_cpu_time_total) / 1000, 3)] for e in events]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/chest_xray", help="data.root")
    ap.add_argument("--cache-dir", default=None, help="data.cache_dir (default: a temporary folder)")
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["before:64", "after:64", "before:256", "after:256", "after_compile:64", "after_compile:256"],
    )
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per configuration")
    ap.add_argument("--warmup", type=int, default=15, help="untimed steps first")
    ap.add_argument("--warmup-compiled", type=int, default=25, help="untimed steps first when compiled")
    ap.add_argument("--profile", action="store_true", help="profile --profile-steps steps per configuration")
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--override", nargs="*", default=[], help="more train.py overrides for every configuration")
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="CPU, synthetic images, tiny net, a few steps")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="gpu_framework_"))
    if args.smoke:
        from pneumonia.data.synthetic import make_chest_xray_tree

        args.data = str(make_chest_xray_tree(work / "data", {"train": (40, 40)}))
        args.override = [
            *args.override,
            "debug=tiny",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "data.decode_threads=1",
        ]
        args.seconds, args.warmup, args.warmup_compiled, args.profile_steps = 0.2, 2, 2, 2
        args.configs = [c for c in args.configs if not c.startswith(("after_compile", "after_ro"))] or ["before:8"]
        args.configs = list(dict.fromkeys(f"{c.split(':')[0]}:8" for c in args.configs))
    args.cache_dir = args.cache_dir or str(work / "cache")
    on_gpu = torch.cuda.is_available() and not args.smoke
    device_name = torch.cuda.get_device_name(0) if on_gpu else "the CPU (smoke)"
    rows: list[list[Any]] = []
    failures: list[str] = []
    profiles: dict[str, Any] = {}
    rates: dict[str, float] = {}

    def save() -> None:
        smoke = " SMOKE RUN: CPU, synthetic images, tiny net; not a measurement." if args.smoke else ""
        common = {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "lightning": L.__version__,
            "failures": failures,
            "overrides": COMMON + args.override,
            "settings": {k: v for k, v in SETTINGS.items()},
        }
        if args.profile:
            write_result(
                "gpu_profile",
                title=f"Profile of the training step, before and after, on {device_name}",
                columns=["config", "op", "calls", "self device ms", "device ms", "self CPU ms", "CPU ms"],
                rows=rows,
                out_dir=args.out_dir,
                notes=(
                    f"torch.profiler over {args.profile_steps} training steps after the warm-up, through "
                    f"the framework's Trainer path; the top {args.top} ops by self device time per "
                    "configuration (self CPU time on the CPU); extra.profiles: steps' wall ms and the "
                    "counts of sync-related events (cudaStreamSynchronize, aten::item, ...)." + smoke
                ),
                extra={**common, "profiles": profiles},
            )
        else:
            write_result(
                "gpu_framework",
                title=f"Training images/s through the framework's Trainer path on {device_name}",
                columns=[
                    "config",
                    "batch",
                    "train img/s",
                    "vs before (same batch)",
                    "timed steps",
                    "precision",
                    "first step s",
                ],
                rows=rows,
                out_dir=args.out_dir,
                notes=(
                    "The original CNN at 150 px gray through conf/train.yaml's path (DataModule, module, "
                    "callbacks, Lightning Trainer), no validation; timed over about "
                    f"{args.seconds} s after the warm-up steps, synchronized at both ends, epoch ends "
                    "included. 'first step s' includes torch.compile's compile where on." + smoke
                ),
                extra=common,
            )

    for spec in args.configs:
        name, _, b = spec.partition(":")
        batch = int(b or 64)
        label = f"{name}:{batch}"
        try:
            if name not in SETTINGS:
                raise ValueError(f"unknown configuration {name!r}: one of {', '.join(SETTINGS)}")
            start = time.perf_counter()
            window = run_config(
                args, name, batch, work / label.replace(":", "_"), args.profile_steps if args.profile else 0
            )
            wall = time.perf_counter() - start
            if window.rate is None:
                raise RuntimeError(f"the window never closed ({window.steps} steps ran)")
            if args.profile:
                prof = window.profiler
                top, counts = averages(prof, on_gpu, args.top)
                rows += [[label, *r] for r in top]
                step_ms = 1000 * (window.t1 - window.t0) / window.timed_steps
                profiles[label] = {
                    "steps": window.timed_steps,
                    "wall ms per step (profiled)": round(step_ms, 3),
                    "sync_events": counts,
                    "top_self_cpu": host_rows(prof, args.top),
                }
                if args.out_dir is not None:
                    trace = work / f"trace_{label.replace(':', '_')}.json"
                    prof.export_chrome_trace(str(trace))
                    with open(trace, "rb") as f, gzip.open(work / f"{trace.name}.gz", "wb") as g:
                        shutil.copyfileobj(f, g)
                    profiles[label]["trace"] = f"{trace.name}.gz"
                print(f"{label}: {step_ms:.2f} ms/step profiled; syncs {counts}", flush=True)
            else:
                rate = window.rate
                rates[label] = rate
                before = rates.get(f"before:{batch}")
                rows.append(
                    [
                        name,
                        batch,
                        round(rate, 1),
                        round(rate / before, 2) if before else None,
                        window.timed_steps,
                        window.precision,
                        round(window.first_step_s or 0, 1),
                    ]
                )
                print(f"{label}: {rate:.0f} img/s over {window.timed_steps} steps ({wall:.0f} s in all)", flush=True)
        except Exception as e:  # one configuration failing must not lose the others
            traceback.print_exc()
            failures.append(f"{label}: {type(e).__name__}: {str(e)[:400]}")
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        save()
    if args.profile and args.out_dir is not None:
        traces = sorted(work.glob("trace_*.json.gz"))
        if traces and sum(t.stat().st_size for t in traces) < 15 * 2**20:
            import tarfile

            with tarfile.open(args.out_dir / "gpu_profile_traces.tar", "w") as tar:
                for t in traces:
                    tar.add(t, arcname=t.name)
    if not rows:
        raise SystemExit("no configuration ran")


if __name__ == "__main__":
    main()
