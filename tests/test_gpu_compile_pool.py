"""On the GPU: configs compiled ahead by the pool (meta tensors, other processes) are what the launch in this
process finds in Triton's on-disk cache, for every load path; and a sweep that compiles ahead finds the same
kind of winner as one that compiles when timing. Skipped without CUDA."""

import os

import pytest
import torch

from flashcore.autotune import Point, check, resolve_profile
from flashcore.autotune.tuning.compile_pool import CompilePool
from flashcore.autotune.tuning.inputs import make_inputs
from flashcore.autotune.tuning.sweep import sweep
from flashcore.cache import CacheStore
from flashcore.kernels import get_family
from flashcore.kernels.attention_fwd.launch import attention_fwd
from flashcore.kernels.reference import attention_reference
from flashcore.autotune.tuning.options import SweepOptions

pytestmark = pytest.mark.gpu

CONFIGS = [dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, CAUSAL_SPLIT=True),
           dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2, CAUSAL_SPLIT=True, LOADS="device_tma"),
           dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, LOADS="host_tma", WARP_SPECIALIZE=True)]


def _kernels(cache_dir):
    """The compiled kernels in a Triton cache: its entries holding a cubin (the launch also caches the C
    launcher stubs it builds on first use, which a compile alone never needs)."""
    if not os.path.isdir(cache_dir):
        return set()
    return {name for name in os.listdir(cache_dir)
            if any(f.endswith(".cubin") for f in os.listdir(os.path.join(cache_dir, name)))}


def test_precompiled_kernel_is_found_by_the_launch(tmp_path, monkeypatch):
    cache_dir = str(tmp_path / "triton-cache")
    monkeypatch.setenv("TRITON_CACHE_DIR", cache_dir)
    point = Point(2, 3, 1000, 64, True)  # odd H, S not a multiple of the blocks
    with CompilePool(get_family("attention_fwd"), 3) as pool:
        pool.ahead(point, CONFIGS)
        outcomes = [pool.wait(point, c, 300) for c in CONFIGS]
    assert [o.status for o in outcomes] == ["ok"] * len(CONFIGS), outcomes
    before = _kernels(cache_dir)
    assert len(before) == len(CONFIGS)
    q, k, v = make_inputs(point, "cuda")
    ref = attention_reference(q, k, v, causal=True)
    for config in CONFIGS:
        out = torch.full_like(q, float("nan"))
        attention_fwd(q, k, v, config, causal=True, out=out)
        assert check(out, ref, "float16").passed
    assert _kernels(cache_dir) == before, "the launch compiled again: the pool compiled another specialization"


@pytest.mark.slow  # two sweeps of two points, one with a pool of four compile processes
def test_sweep_compiling_ahead_matches_serial(tmp_path):
    profile = resolve_profile("auto")
    points = [Point(4, 8, 256, 64, False), Point(2, 5, 333, 128, True)]
    found = {}
    for workers in (0, 4):
        with CacheStore.memory() as store:
            res = sweep(points, store, SweepOptions(profile=profile, trials=6, seed=0, rep_ms=20, compile_workers=workers, kernels=("attention_fwd",)))
        assert all(r.best is not None and r.best.rel_err < 2e-3 for r in res)
        found[workers] = [r.trials[0].config for r in res]
    assert found[0] == found[4]  # the space's default first, compiled ahead or not
