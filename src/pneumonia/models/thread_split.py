"""Data parallelism over CPU threads inside one training step (`module.split_batch`).

oneDNN's fp32 convolutions scale poorly from one to two threads inside one op on the 2-core
AVX2 CPUs we measured: one training step of the seed CNN (batch 64, 150 px, gray) ran at
about 30 images/s with two intra-op threads, and at about 34 with the batch cut in two halves
that run at once, each on its own thread with one intra-op thread (docs/performance.md,
`benchmarks/cpu_step.py`); TensorFlow gets the same effect from its inter-op parallelism.

`split_run(body, x, pool)` does this for a part of a net with no randomness and no batch
statistics (the seed CNN's conv blocks): the forward pass of each chunk, then in the backward
pass each chunk's gradients, on the pool's threads. The chunks' parameter gradients are added
in chunk order, so a run is as deterministic as the plain one; they equal the plain pass's
gradients up to float rounding (the sum is split differently).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def thread_pool(workers: int) -> ThreadPoolExecutor:
    """`workers` threads, each set to ONE intra-op thread (made once per process and size).

    PyTorch sets a thread's OpenMP thread count from the process-wide value on that thread's
    first parallel op. Each worker sets 1 and makes that first call while the caller waits,
    then the caller's process-wide value is put back: the workers keep 1, the caller its own.
    """
    with _LOCK:
        pool = _POOLS.get(workers)
        if pool is not None:
            return pool
        caller_threads = torch.get_num_threads()
        ready = threading.Barrier(workers + 1)

        def one_thread() -> None:
            torch.set_num_threads(1)
            torch.get_num_threads()  # the per-thread setting is taken now, at 1

        pool = ThreadPoolExecutor(workers, initializer=one_thread, thread_name_prefix="split-batch")
        # a ThreadPoolExecutor starts a thread per submit while none is idle: with every task
        # waiting at the barrier, all `workers` threads start and run their initializer
        waiting = [pool.submit(ready.wait) for _ in range(workers)]
        ready.wait()
        for future in waiting:
            future.result()
        torch.set_num_threads(caller_threads)
        _POOLS[workers] = pool
        return pool


class _SplitRun(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, body: nn.Module, workers: int, *params: torch.Tensor) -> torch.Tensor:
        pool = thread_pool(workers)
        chunks = x.chunk(workers)

        def run(chunk: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():  # grad mode is per thread; the graph of each chunk is its own
                return body(chunk)

        outs = list(pool.map(run, chunks))
        ctx.outs, ctx.params, ctx.pool = outs, params, pool
        return torch.cat([out.detach() for out in outs])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        outs: list[torch.Tensor] = ctx.outs
        params: Sequence[torch.Tensor] = ctx.params
        grads = grad.split([len(out) for out in outs])

        def run(i: int) -> tuple[torch.Tensor | None, ...]:
            return torch.autograd.grad(outs[i], params, grads[i], allow_unused=True)

        per_chunk = list(ctx.pool.map(run, range(len(outs))))
        ctx.outs = None  # the chunks' graphs are spent
        summed: list[torch.Tensor | None] = []
        for chunk_grads in zip(*per_chunk):
            total = None
            for g in chunk_grads:  # in chunk order: the same sum every run
                if g is not None:
                    total = g if total is None else total + g
            summed.append(total)
        return (None, None, None, *summed)  # x, body, workers: no gradient


def split_run(body: nn.Module, x: torch.Tensor, workers: int) -> torch.Tensor:
    """`body(x)` with x's batch cut into `workers` chunks run at once on a thread each (forward
    and backward). Falls back to `body(x)` where it does not apply: no gradient being recorded,
    an input that needs its own gradient, autocast on (its state is per thread), or a batch
    smaller than `workers`."""
    params = [p for p in body.parameters() if p.requires_grad]
    if (
        workers < 2
        or not torch.is_grad_enabled()
        or x.requires_grad
        or not params
        or len(x) < workers
        or torch.is_autocast_enabled(x.device.type)
    ):
        return body(x)
    return _SplitRun.apply(x, body, workers, *params)
