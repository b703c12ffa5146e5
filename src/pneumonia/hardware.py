"""Choosing the numeric precision by what the hardware runs fast.

bf16 autocast pays off only where the hardware has bf16 instructions: CPUs with
AVX512-BF16 or AMX, and GPUs from Ampere on. Elsewhere oneDNN emulates bf16 on the CPU,
which is about 10x slower than fp32 for this network (README "Performance" has the
measurements and the machines they come from), so `auto` picks bf16 only where it is native.
"""

from __future__ import annotations

import functools
import glob
import os

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def no_gpu_visible() -> bool:
    """True when this process can see no NVIDIA GPU, told without importing torch: no driver
    (/proc/driver/nvidia, /dev/nvidia*) or CUDA_VISIBLE_DEVICES empty or -1."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return True
    return not (os.path.exists("/proc/driver/nvidia") or glob.glob("/dev/nvidia[0-9]*"))


def cuda_available() -> bool:
    """`torch.cuda.is_available()`, without importing torch where no GPU can be visible
    (the command line's checks and `--help` resolve the precision before any model exists)."""
    if no_gpu_visible():
        return False
    import torch

    return torch.cuda.is_available()


def auto_precision(accelerator: str = "auto") -> str:
    """The Trainer precision for `accelerator` (auto, cpu, gpu, cuda)."""
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda_available())
    if on_gpu:
        import torch

        return "bf16-mixed" if cuda_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
