"""Compiling ahead of timing: the pool, its deduplication, failures and crashes, and a sweep that uses it.

The interpreter compiles nothing, so the pool's own behaviour is tested with a planted precompiler
(tests/fake_precompile.py) that logs each compile, rejects BLOCK_N == 16 and crashes its process on
BLOCK_M == BLOCK_N == 64; the trials themselves are the real kernel in the interpreter. The real precompiler is
exercised on the H100 (tests/test_gpu.py::test_precompiled_kernel_is_found_by_the_launch)."""

import dataclasses
import json

import pytest
import torch

from flashcore.autotune import PROFILES, Point
from flashcore.autotune.tuning.compile_pool import CompilePool, default_workers
from flashcore.autotune.tuning.sweep import sweep, tune_point
from flashcore.cache import CacheStore
from flashcore.kernels import get_family
from flashcore.kernels.attention_fwd.precompile import compile_key as compile_key_attention_fwd
from flashcore.kernels.attention_fwd.precompile import precompile as precompile_attention_fwd
from flashcore.autotune.tuning.options import SweepOptions

CPU = PROFILES["cpu"]
FAKE = dataclasses.replace(get_family("attention_fwd"), precompiler="fake_precompile:precompile",
                           compile_key="fake_precompile:key")
A, B = Point(1, 3, 77, 64, True), Point(2, 3, 50, 64, True)  # one head dim and mask: one compiled kernel each
CFG = {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1, "CAUSAL_SPLIT": True, "LOADS": "pointer",
       "WARP_SPECIALIZE": False, "HEADS_FIRST": False, "REVERSE": False, "PERSISTENT": False}


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "compiles.jsonl"
    path.touch()
    monkeypatch.setenv("FAKE_PRECOMPILE_LOG", str(path))
    return path


def compiles(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def cfg(**kw):
    return {**CFG, **kw}


def test_default_workers():
    assert default_workers(interpreter=True) == 0
    assert default_workers(interpreter=False) >= 1


def test_pool_compiles_each_kernel_once_across_points(log):
    configs = [cfg(BLOCK_M=m) for m in (16, 32)] + [cfg(num_stages=2)]
    with CompilePool(FAKE, 2) as pool:
        pool.behind(B, configs)
        pool.ahead(A, configs)
        for c in configs:
            assert pool.wait(A, c, 60).status == "ok"
            assert pool.wait(B, c, 60).status == "ok"  # the same compiled kernel: no new job
        assert pool.stats.submitted == 3 and pool.stats.restarts == 0
    assert len(compiles(log)) == 3
    assert sorted(map(json.dumps, (c["config"] for c in compiles(log)))) == sorted(
        json.dumps(c, sort_keys=True) for c in configs)


def test_pool_reports_compile_errors_and_survives_a_crash(log):
    with CompilePool(FAKE, 2) as pool:
        bad = pool.wait(A, cfg(BLOCK_N=16), 60)
        assert bad.status == "compile_error" and "planted by fake_precompile" in bad.reason
        assert pool.wait(A, cfg(BLOCK_M=64, BLOCK_N=64), 60) is None  # its process died: unknown
        assert pool.stats.restarts == 1
        assert pool.wait(A, cfg(BLOCK_M=16), 60).status == "ok"  # a fresh pool goes on


def test_a_precompiler_bug_leaves_the_config_to_the_timing_worker(log):
    with CompilePool(FAKE, 1) as pool:
        assert pool.wait(A, cfg(num_stages=7), 60) is None
        assert "ZeroDivisionError: planted bug" in pool.stats.extra["last_error"]
        assert pool.stats.restarts == 0 and pool.wait(A, cfg(), 60).status == "ok"


def test_fp8_compile_key_runs_the_launcher_quantization_on_meta_tensors():
    from flashcore.kernels.attention_fp8.precompile import compile_key as compile_key_attention_fp8
    from flashcore.kernels import load_space

    config = {name: values[0] for name, values in load_space("attention_fp8").params}
    def key(shape):
        return compile_key_attention_fp8(shape, shape, torch.float16, True, config)

    assert key((1, 3, 77, 64)) == key((2, 3, 50, 64)) != key((2, 3, 64, 64))
    assert get_family("attention_fp8").precompiler is not None


def test_pool_needs_a_precompiler_and_a_worker():
    with pytest.raises(ValueError, match="no precompiler"):
        CompilePool(dataclasses.replace(FAKE, precompiler=None), 2)
    with pytest.raises(ValueError, match="at least one"):
        CompilePool(FAKE, 0)


def test_tune_point_records_pool_compile_errors_without_running_them(log):
    with CacheStore.memory() as store, CompilePool(FAKE, 2) as pool:
        res = tune_point(A, store, SweepOptions(profile=CPU, trials=50, seed=0), kernel=FAKE, pool=pool)
    by = {}
    for t in res.trials:
        by.setdefault(t.status, []).append(t)
    # BLOCK_N 16 passes in the interpreter; recorded as the pool's compile error, so it never ran there
    assert by["compile_error"] and all(t.config["BLOCK_N"] == 16 for t in by["compile_error"])
    assert all(t.extra.get("compiled_by") == "pool" and "planted" in t.reason for t in by["compile_error"])
    assert all(t.config["BLOCK_N"] != 16 for t in by["ok"])
    # the crash of the compiler left BLOCK_M = BLOCK_N = 64 to the worker, which ran it fine
    assert any(t.config["BLOCK_M"] == 64 and t.config["BLOCK_N"] == 64 for t in by["ok"])
    assert res.best is not None and res.best.config["BLOCK_N"] != 16
    logged = compiles(log)
    compiled = {json.dumps(c["config"], sort_keys=True) for c in logged}
    tried = {json.dumps(t.config, sort_keys=True) for t in res.trials}
    assert compiled <= tried and len(logged) - 2 <= len(compiled)  # nothing compiled in vain; at most a crash redo
    # the crash can take down one compile in flight in the other process before it logged: the timing worker
    # then compiles that config itself
    assert len(tried - compiled) <= 1, sorted(tried - compiled)


def test_sweep_with_compile_workers_shares_kernels_between_points(log):
    with CacheStore.memory() as store:
        results = sweep([A, B], store, SweepOptions(profile=CPU, trials=3, seed=0, compile_workers=2, kernels=(FAKE,)))
    assert all(r.best is not None for r in results)
    keys = [json.dumps(c["config"], sort_keys=True) for c in compiles(log)]
    crash = json.dumps(cfg(BLOCK_M=64, BLOCK_N=64), sort_keys=True)
    assert len(keys) - keys.count(crash) == len(set(keys) - {crash})  # once each, across both points


@pytest.mark.parametrize("other, same", [
    (Point(2, 3, 50, 64, True), True),       # S, B: not multiples of 16, not 1: one kernel
    (Point(1, 3, 80, 64, True), False),      # S = 80 is a multiple of 16: Triton specializes it
    (Point(1, 3, 77, 64, False), False),     # the mask is a constexpr
    (Point(1, 3, 77, 128, True), False),     # head dim
    (Point(1, 1, 77, 64, True), False),      # H = 1 is a constant to Triton
], ids=["B2-H3-S50-D64-causal", "B1-H3-S80-D64-causal", "B1-H3-S77-D64", "B1-H3-S77-D128-causal",
        "B1-H1-S77-D64-causal"])
def test_compile_key_follows_triton_specialization(other, same):
    def key(p):
        shape = (p.batch, p.heads, p.seq_len, p.head_dim)
        return compile_key_attention_fwd(shape, shape, torch.float16, p.causal, CFG)

    assert (key(A) == key(other)) is same


def test_real_precompiler_compiles_nothing_in_the_interpreter():
    assert precompile_attention_fwd((1, 3, 77, 64), (1, 3, 77, 64), torch.float16, True, CFG) is False
