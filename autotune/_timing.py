"""Timing policy: device-time quantiles after warm-up on CUDA; wall time (meaningless for speed) on the CPU."""

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
            cpu_reps: int = 2) -> Timing:
    """Median, P95 and P99 of ``fn``'s run time in µs.

    CUDA: ``triton.testing.do_bench`` (CUDA events per repetition, L2 flushed between them, warm-up first).
    CPU (Triton's interpreter): ``cpu_reps`` wall-clock runs; good for ordering the search, not for claims.
    """
    if cuda:
        import triton.testing

        q50, q95, q99 = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.95, 0.99])
        return Timing(q50 * 1e3, q95 * 1e3, q99 * 1e3, "cuda-events")
    samples = []
    for _ in range(max(1, cpu_reps)):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]  # noqa: E731
    return Timing(statistics.median(samples), max(pick(0.95), statistics.median(samples)), samples[-1], "cpu-wall")
