"""Choosing the numeric precision by what the hardware runs fast.

bf16 autocast pays off only where the hardware has bf16 instructions: CPUs with
AVX512-BF16 or AMX, and GPUs from Ampere on. Elsewhere oneDNN emulates bf16 on the CPU,
which is about 10x slower than fp32 for this network (README "Performance" has the
measurements and the machines they come from), so `auto` picks bf16 only where it is native.
"""

from __future__ import annotations

import functools

import torch

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def auto_precision(accelerator: str = "auto") -> str:
    """The Trainer precision for `accelerator` (auto, cpu, gpu, cuda)."""
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
