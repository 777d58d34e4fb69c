"""attention_kv compiled on CUDA: the interpreter's correctness cases, decode and chunked-prefill shapes at
cache sizes (S 4096, 32K; B 3; L 1 and 7), poisoned outputs and workspaces, ahead-of-time compiles, typed
resource errors, and a printed K/V bandwidth of a decode case (no speed assertion).

Tiers (tests/_tiers.py): the fast tier keeps five of the small cases (every mask, L 1 and longer, D 16 to 128,
both dtypes) and two of the large ones (a 32K decode, a chunked prefill); the rest and the bandwidth print run
under `-m gpu` only."""

from __future__ import annotations

import pytest
import torch

from flashcore.autotune import check
from flashcore.kernels import KernelError
from flashcore.kernels.attention_kv import launch as kv_launch
from flashcore.kernels.attention_kv.launch import attention_kv, compile_key, precompile
from flashcore.kernels.reference import attention_reference

from test_attention_kv import CASES, MASKS, case_id, make_kv_inputs, sdpa_truth

from _tiers import tiered

pytestmark = pytest.mark.gpu


def cfg(bm, bn, splits, pack, warps=4, stages=2):
    return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, NUM_SPLITS=splits, PACK_GQA=pack)


@pytest.fixture(autouse=True)
def _nan_workspace(monkeypatch):
    """Split-KV workspaces start as NaN, so a partial left unwritten reaches the output and fails the gate."""
    real = kv_launch.alloc_partials

    def poisoned(q, num_splits):
        parts = real(q, num_splits)
        if parts is not None:
            for p in parts:
                p.fill_(float("nan"))
        return parts

    monkeypatch.setattr(kv_launch, "alloc_partials", poisoned)


def run_cuda(shape, mask, config, dtype="float16"):
    q, k, v = (x.cuda() for x in make_kv_inputs(*shape, dtype=dtype))
    causal, lower_right = MASKS[mask]
    out = torch.full_like(q, float("nan"))
    attention_kv(q, k, v, config, causal=causal, lower_right=lower_right, out=out)
    torch.cuda.synchronize()
    return out, (q, k, v)


SMALL = [(shape, mask) for shape, masks in CASES for mask in masks]
SMALL_CONFIGS = [cfg(16, 16, 1, False), cfg(16, 32, 3, True), cfg(32, 16, 8, True), cfg(32, 16, 8, False),
                 cfg(64, 64, 2, True, warps=4, stages=3), cfg(128, 64, 1, False, warps=8, stages=2)]


SMALL_CASES = [(shape, mask, dtype) for shape, mask in SMALL for dtype in ("float16", "bfloat16")]


@pytest.mark.parametrize("shape, mask, dtype", tiered(
    SMALL_CASES, [f"{case_id(*s, m)}-{d}" for s, m, d in SMALL_CASES],
    fast=["B2-H8kv2-L3-S77-D64-causal_tl-float16", "B1-H7kv1-L16-S200-D48-causal_lr-bfloat16",
          "B1-H8kv2-L1-S200-D128-full-float16", "B1-H4kv2-L50-S130-D64-causal_lr-bfloat16",
          "B2-H4kv2-L1-S1-D16-causal_lr-float16"], unpack=True))
def test_small_cases_match_sdpa(shape, mask, dtype):
    for config in SMALL_CONFIGS:
        out, (q, k, v) = run_cuda(shape, mask, config, dtype)
        ref = sdpa_truth(q.cpu(), k.cpu(), v.cpu(), mask)  # SDPA on the CPU in fp32 with enable_gqa
        verdict = check(out.cpu(), ref, dtype)
        assert verdict.passed, f"{config}: {verdict.reason}"


# (B, Hq, Hkv, L, S, D): decode on a 32K cache, a speculative / multi-token decode (L 7), chunked prefill.
LARGE = [
    ((3, 32, 8, 1, 32768, 128), "causal_lr"),
    ((3, 28, 4, 7, 4096, 128), "causal_lr"),
    ((3, 28, 4, 7, 4096, 128), "full"),
    ((3, 12, 12, 1, 32768, 64), "causal_lr"),
    ((3, 64, 8, 7, 32768, 64), "causal_lr"),
    ((2, 8, 2, 300, 4096, 64), "causal_lr"),
    ((2, 8, 2, 300, 4096, 64), "causal_tl"),
]
LARGE_CONFIGS = [cfg(16, 64, 1, True), cfg(16, 128, 16, True), cfg(64, 64, 4, False), cfg(16, 64, 64, False),
                 cfg(64, 128, 8, True, warps=8, stages=3), cfg(128, 64, 2, True, warps=8, stages=2)]


LARGE_CASES = [(shape, mask, dtype) for shape, mask in LARGE for dtype in ("float16", "bfloat16")]


@pytest.mark.parametrize("shape, mask, dtype", tiered(
    LARGE_CASES, [f"{case_id(*s, m)}-{d}" for s, m, d in LARGE_CASES],
    fast=["B3-H32kv8-L1-S32768-D128-causal_lr-bfloat16", "B2-H8kv2-L300-S4096-D64-causal_tl-float16"],
    unpack=True))
def test_large_cases_match_reference(shape, mask, dtype):
    ref = None
    for config in LARGE_CONFIGS:
        out, (q, k, v) = run_cuda(shape, mask, config, dtype)
        if ref is None:
            causal, lower_right = MASKS[mask]
            ref = attention_reference(q, k, v, causal=causal, lower_right=lower_right)
        verdict = check(out, ref, dtype)
        assert verdict.passed, f"{config}: {verdict.reason}"


def test_reference_on_cuda_matches_sdpa_on_cpu():
    q, k, v = make_kv_inputs(2, 8, 2, 7, 300, 64)
    for mask, (causal, lower_right) in MASKS.items():
        ref = attention_reference(q.cuda(), k.cuda(), v.cuda(), causal=causal, lower_right=lower_right)
        torch.testing.assert_close(ref.cpu(), sdpa_truth(q, k, v, mask), atol=1e-4, rtol=1e-4)


def test_precompile_then_launch():
    shape_q, shape_kv = (2, 32, 1, 128), (2, 8, 4096, 128)
    for config in (cfg(16, 64, 1, True), cfg(16, 64, 8, True)):
        assert precompile(shape_q, shape_kv, torch.float16, True, config, True) is True
        assert compile_key(shape_q, shape_kv, torch.float16, True, config, True) == \
            compile_key((2, 32, 1, 128), (2, 8, 8192, 128), torch.float16, True, config, True)
        out, _ = run_cuda((2, 32, 8, 1, 4096, 128), "causal_lr", config)
        assert torch.isfinite(out).all()


def test_oversized_config_is_a_typed_error():
    q, k, v = (x.cuda() for x in make_kv_inputs(1, 8, 8, 128, 1024, 256))
    with pytest.raises(KernelError):
        attention_kv(q, k, v, cfg(128, 128, 1, False, warps=4, stages=8))
        torch.cuda.synchronize()


@pytest.mark.slow  # a benchmark print, no assertion
def test_print_decode_kv_bandwidth():
    """Bytes of K and V read per decode step / time, for a few configs (printed; run with -s to see)."""
    import triton.testing

    b, hq, hkv, lq, s, d = 8, 32, 8, 1, 32768, 128
    q = torch.randn(b, hq, lq, d, device="cuda", dtype=torch.float16)
    k, v = (torch.randn(b, hkv, s, d, device="cuda", dtype=torch.float16) for _ in range(2))
    kv_bytes = 2 * k.numel() * k.element_size()
    out = torch.empty_like(q)
    for config in (cfg(16, 64, 1, True), cfg(16, 128, 8, True, stages=3), cfg(16, 64, 16, False)):
        ms = triton.testing.do_bench(
            lambda: attention_kv(q, k, v, config, causal=True, lower_right=True, out=out), warmup=10, rep=50)
        print(f"\ndecode B{b}-H{hq}kv{hkv}-L{lq}-S{s}-D{d} {config}: {ms * 1e3:.1f} us, "
              f"K/V {kv_bytes / (ms * 1e-3) / 1e9:.0f} GB/s")
