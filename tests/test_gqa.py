"""Grouped- and multi-query heads and unequal lengths through the drop-in op and get_kernel, in the interpreter
against SDPA (``enable_gqa``, ``causal_lower_right``); backends as candidates through the same gate."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

from flashcore.autotune import PROFILES, Point, attention, check, get_kernel
from flashcore.autotune.tuning.options import SweepOptions
from flashcore.autotune.tuning.sweep import tune_point
from flashcore.cache import CacheStore
from flashcore.kernels import KernelFamily, get_family
from flashcore.kernels.attention_fwd.launch import attention_fwd, kernel_for
from flashcore.kernels.attention_fwd.kernel import attn_fwd_gqa

from _shapes import fwd_config

CPU = PROFILES["cpu"]
CONFIG = fwd_config(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1, CAUSAL_SPLIT=True)


def _inputs(b, hq, hkv, lq, lk, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, lq, d, generator=gen)
    k, v = (torch.randn(b, hkv, lk, d, generator=gen) for _ in range(2))
    q[:, :, lq // 3] *= 8.0  # planted large values: logits far past exp's range without the running max
    k[:, :, lk // 2] *= 8.0
    v[:, :, (lk - 1) // 2] *= 4.0
    return tuple(x.to(dtype) for x in (q, k, v))


def _truth(q, k, v, **kw):
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True, **kw)


GQA_CASES = [  # (B, Hq, Hkv, S, D, causal, dtype): odd S, odd groups, MQA
    (3, 6, 2, 77, 64, True, torch.float16),
    (1, 7, 1, 50, 32, False, torch.float16),
    (2, 9, 3, 33, 64, True, torch.bfloat16),
    (1, 5, 5, 40, 32, True, torch.float16),
]


def _gqa_id(case):
    b, hq, hkv, s, d, causal, dtype = case
    return f"B{b}-H{hq}kv{hkv}-S{s}-D{d}-{'causal' if causal else 'full'}-{str(dtype)[6:]}"


@pytest.mark.parametrize("case", GQA_CASES, ids=_gqa_id)
def test_attention_fwd_takes_grouped_query_heads(case):
    b, hq, hkv, s, d, causal, dtype = case
    q, k, v = _inputs(b, hq, hkv, s, s, d, dtype)
    out = torch.full_like(q, float("nan"))  # poisoned: a tile never written fails the gate
    attention_fwd(q, k, v, CONFIG, causal=causal, out=out)
    verdict = check(out, _truth(q, k, v, is_causal=causal), str(dtype)[6:])
    assert verdict.passed, verdict.reason
    assert kernel_for(q, k) is (attn_fwd_gqa if hq != hkv else kernel_for(q, q))


def test_gqa_through_transposed_layouts():
    """transformers hands q, k, v as (B, S, H, D) memory viewed (B, H, S, D): no copy, same result."""
    q, k, v = _inputs(2, 6, 2, 45, 45, 32, torch.float16)
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not qt.is_contiguous()
    out = attention_fwd(qt, kt, vt, CONFIG, causal=True)
    assert check(out, _truth(q, k, v, is_causal=True), "float16").passed


@pytest.mark.parametrize("case", GQA_CASES[:2], ids=_gqa_id)
def test_the_op_serves_gqa_with_enable_gqa(case):
    b, hq, hkv, s, d, causal, dtype = case
    q, k, v = _inputs(b, hq, hkv, s, s, d, dtype)
    out = attention(q, k, v, is_causal=causal, enable_gqa=True, strict=True)
    assert check(out, _truth(q, k, v, is_causal=causal), str(dtype)[6:]).passed
    served = get_kernel(q.shape, dtype, causal, kv_heads=hkv)
    assert served.kernel == "attention_fwd" and served.source == "default"
    # without enable_gqa the op leaves the call to SDPA, which refuses different head counts (or broadcasts a
    # single kv head): the same answer as SDPA either way
    if hkv > 1:
        with pytest.raises(RuntimeError):
            attention(q, k, v, is_causal=causal)
    else:
        assert torch.equal(attention(q, k, v, is_causal=causal), F.scaled_dot_product_attention(q, k, v, is_causal=causal))


KV_CASES = [  # (B, Hq, Hkv, L, S, mask): decode and chunked prefill over a cache, top-left and bottom-right
    (2, 8, 2, 1, 70, "lower_right"),
    (1, 7, 1, 3, 41, "lower_right"),
    (3, 4, 4, 16, 77, "upper_left"),
    (1, 4, 1, 5, 33, "none"),
]


@pytest.mark.parametrize("case", KV_CASES, ids=lambda c: f"B{c[0]}-H{c[1]}kv{c[2]}-L{c[3]}-S{c[4]}-{c[5]}")
def test_the_op_serves_unequal_lengths_without_materializing_masks(case):
    b, hq, hkv, lq, lk, mask = case
    q, k, v = _inputs(b, hq, hkv, lq, lk, 32, torch.float16)
    bias = {"lower_right": causal_lower_right(lq, lk), "upper_left": causal_upper_left(lq, lk), "none": None}[mask]
    out = attention(q, k, v, attn_mask=bias, enable_gqa=hq != hkv, strict=True)
    truth = _truth(q, k, v, attn_mask=None if bias is None else bias._materialize(q.device))
    assert check(out, truth, "float16").passed
    served = get_kernel(q.shape, torch.float16, bias is not None, kv_heads=hkv, kv_len=lk,
                        lower_right=mask == "lower_right")
    assert served.kernel == "attention_kv"


def test_is_causal_with_unequal_lengths_is_top_left_as_in_sdpa():
    q, k, v = _inputs(1, 4, 2, 5, 40, 32, torch.float16)
    out = attention(q, k, v, is_causal=True, enable_gqa=True, strict=True)
    assert check(out, _truth(q, k, v, is_causal=True), "float16").passed


# -- backends as candidates ------------------------------------------------------------------------------------


def _cpu_backend(name: str, wrong: bool) -> KernelFamily:
    """A backend family running on the CPU (SDPA's math path), or a planted wrong one that forgets the scale."""
    return KernelFamily(name=name, launcher=f"planted_backends:{'wrong' if wrong else 'right'}",
                        reference="reference:attention_reference", space=None, dtypes=("float16", "bfloat16"),
                        kind="backend", lengths="any")


def test_a_wrong_backend_is_rejected_by_the_gate_and_a_right_one_recorded(tmp_path):
    point = Point(1, 6, 45, 32, True, kv_heads=2)
    with CacheStore.open(tmp_path / "c.db") as store:
        bad = tune_point(point, store, SweepOptions(profile=CPU, isolate=False), kernel=_cpu_backend("bad", True))
        good = tune_point(point, store, SweepOptions(profile=CPU, isolate=False), kernel=_cpu_backend("ok", False))
        own = tune_point(point, store, SweepOptions(profile=CPU, trials=2, isolate=False), kernel="attention_fwd")
        assert [t.status for t in bad.trials] == ["gate_failed"] and bad.best is None
        assert "outside" in bad.trials[0].reason or "relative L2" in bad.trials[0].reason
        assert [t.status for t in good.trials] == ["ok"] and good.best is not None
        assert good.key.kernel_hash != own.key.kernel_hash  # a backend's hash is its builds' fingerprint
        winners = {w.key.kernel for w in store.winners()}
    assert winners == {"ok", "attention_fwd"}


def test_get_kernel_serves_the_fastest_candidate_and_own_excludes_backends(tmp_path, monkeypatch):
    from flashcore.autotune.core.toolchain import make_key
    from flashcore.cache import Entry
    from flashcore.kernels import FAMILIES

    backend = _cpu_backend("sdpa_planted", False)
    monkeypatch.setitem(FAMILIES, backend.name, backend)
    point = Point(1, 6, 45, 32, True, kv_heads=2)
    db = tmp_path / "c.db"
    with CacheStore.open(db) as store:
        for family, median in ((backend, 5.0), (get_family("attention_fwd"), 9.0)):
            key = make_key(point, family, "cpu-interpreter", "cpu")
            config = {} if family is backend else dict(CONFIG)
            store.put_winner(Entry(key, config, median, median, median, 1.0, 1e-4, "2026-01-01T00:00:00+00:00"))
    shape = (point.batch, point.heads, point.seq_len, point.head_dim)
    served = get_kernel(shape, torch.float16, True, db=db, kv_heads=2)
    own = get_kernel(shape, torch.float16, True, db=db, kv_heads=2, kernel="own")
    assert (served.kernel, served.source, served.backend) == ("sdpa_planted", "exact", True)
    assert (own.kernel, own.source, own.backend) == ("attention_fwd", "exact", False)
    q, k, v = _inputs(1, 6, 2, 45, 45, 32, torch.float16)
    assert check(served(q, k, v), _truth(q, k, v, is_causal=True), "float16").passed
    # another torch build: the backend's entry is stale (its speed and correctness depend on the build)
    stale = dataclasses.replace(backend, name="sdpa_planted_other")
    monkeypatch.setitem(FAMILIES, stale.name, stale)
    assert get_family("sdpa_planted").kernel_hash() != "0" * 16


def test_a_backend_runs_with_only_its_switch_on_and_the_switches_come_back():
    from flashcore.kernels.backends import call_with_only

    flags = ("flash", "mem_efficient", "math", "cudnn")
    state = lambda: {f: getattr(torch._C, f"_get_{f}_sdp_enabled")() for f in flags}  # noqa: E731
    before = state()
    seen = call_with_only("math", state)
    assert seen == {f: f == "math" for f in flags} and state() == before
    with pytest.raises(ZeroDivisionError):  # restored after an error too
        call_with_only("cudnn", lambda: 1 / 0)
    assert state() == before
    q, k, v = _inputs(1, 4, 2, 9, 9, 16, torch.float32)
    out = call_with_only("math", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    torch.testing.assert_close(out, _truth(q, k, v, is_causal=True))
