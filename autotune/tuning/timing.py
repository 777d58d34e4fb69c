"""Timing policy: device-time quantiles after warm-up on CUDA; wall time (meaningless for speed) on the CPU.

On CUDA the call is captured once in a CUDA graph and the graph's replays are timed. ``do_bench`` brackets each
repetition with CUDA events right after flushing L2 (a ~256 MB memset, about 85 µs on an H100): a call whose
host side takes longer than that (a Python launch path, a CPU busy compiling) leaves the GPU idle between the
start event and the kernel, and that idle time was being counted as the kernel's. A replay costs the host a few
µs, so what is measured is the device's time alone, whichever provider issues the kernels. Calls that cannot be
captured are timed directly (method "cuda-events").
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    median_us: float
    p95_us: float
    p99_us: float
    method: str


def measure(fn: Callable[[], object], *, cuda: bool, warmup_ms: int = 25, rep_ms: int = 100,
            cpu_reps: int = 2, graph: bool = True) -> Timing:
    """Median, P95 and P99 of ``fn``'s run time in µs.

    CUDA: ``triton.testing.do_bench`` (CUDA events per repetition, L2 flushed between them, warm-up first) of
    the replays of ``fn`` captured in a CUDA graph ("cuda-graph-events"), or of ``fn`` itself when ``graph`` is
    False or the capture fails ("cuda-events").
    CPU (Triton's interpreter): ``cpu_reps`` wall-clock runs; good for ordering the search, not for claims.
    """
    if cuda:
        import triton.testing

        replay = _captured(fn) if graph else None
        target, method = (replay, "cuda-graph-events") if replay is not None else (fn, "cuda-events")
        q50, q95, q99 = triton.testing.do_bench(target, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.95, 0.99])
        return Timing(q50 * 1e3, q95 * 1e3, q99 * 1e3, method)
    samples = []
    for _ in range(max(1, cpu_reps)):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]  # noqa: E731
    return Timing(statistics.median(samples), max(pick(0.95), statistics.median(samples)), samples[-1], "cpu-wall")


def _captured(fn: Callable[[], object]) -> Callable[[], None] | None:
    """``fn`` captured in a CUDA graph (after one run on a side stream): its replay, or None if it cannot be."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # first-call work (compiling, allocating, autotuning) happens outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError:  # not capturable (a synchronisation, a host read): time it directly
        torch.cuda.synchronize()
        return None
    return graph.replay
