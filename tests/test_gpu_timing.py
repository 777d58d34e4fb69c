"""On the GPU: the timing policy measures the device's time, not the host's. Skipped without CUDA."""

import time

import pytest
import torch

from flashcore.autotune.tuning.timing import measure

pytestmark = pytest.mark.gpu


def test_graph_timing_ignores_a_slow_host_and_events_do_not():
    x = torch.zeros(1024, device="cuda")

    def slow_host_launch():  # 300 µs of host work before a ~2 µs kernel: a slow Python launch path
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 300e-6:
            pass
        x.add_(1.0)

    graphed = measure(slow_host_launch, cuda=True, rep_ms=20)
    direct = measure(slow_host_launch, cuda=True, rep_ms=20, graph=False)
    assert graphed.method == "cuda-graph-events" and direct.method == "cuda-events"
    assert graphed.median_us < 50, graphed
    assert direct.median_us > 150, direct  # the idle GPU after the L2 flush was counted


def test_uncapturable_call_falls_back_to_events():
    x = torch.ones(16, device="cuda")

    def syncs():
        x.add_(1.0)
        torch.cuda.synchronize()  # not allowed while capturing

    t = measure(syncs, cuda=True, rep_ms=10)
    assert t.method == "cuda-events" and t.median_us > 0
