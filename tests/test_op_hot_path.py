"""The drop-in op's hot path (``dispatch.PLANS``): a call of a class seen before goes to SDPA exactly as made
where SDPA's own choice is served, and to our kernel only after the support check. The CUDA half of the path
(plans recorded by real calls, SDPA's backend pick) is covered in tests/test_gpu_serving.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flashcore.autotune import UnsupportedAttention, attention, clear_cache
from flashcore.autotune.runtime import op
from flashcore.autotune.runtime.dispatch import PLANS, TO_SDPA, runner_for


def _qkv(dtype=torch.float16, b=3, hq=6, hkv=3, lq=17, s=17, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, lq, d, generator=gen).to(dtype)
    k, v = (torch.randn(b, hkv, s, d, generator=gen).to(dtype) for _ in range(2))
    return q, k, v


def _key(q, k, causal):
    s, lq = k.shape[2], q.shape[2]
    return (q.shape, q.stride(), k.shape[1], s if s == lq else -(1 << (s - 1).bit_length()), q.dtype, causal)


@pytest.fixture(autouse=True)
def _fresh():
    clear_cache()
    yield
    clear_cache()


def test_a_call_planned_to_sdpa_goes_to_sdpa_as_made(monkeypatch):
    q, k, v = _qkv()
    PLANS[_key(q, k, True)] = TO_SDPA
    seen = []

    def spy(*args, **kwargs):
        seen.append((args[3:], kwargs))
        return F.scaled_dot_product_attention(*args, **kwargs)

    monkeypatch.setattr(op, "_sdpa", spy)
    out = attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True)
    assert seen == [((None, 0.0, True), {"scale": 0.3, "enable_gqa": True})]
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True))


def test_a_planned_class_does_not_skip_strict_mode():
    q, k, v = _qkv(torch.float32)
    PLANS[_key(q, k, False)] = TO_SDPA
    with pytest.raises(UnsupportedAttention, match="float32"):
        attention(q, k, v, enable_gqa=True, strict=True)


def test_a_mask_or_dropout_never_takes_a_plan(monkeypatch):
    q, k, v = _qkv(torch.float32)
    PLANS[_key(q, k, False)] = TO_SDPA
    monkeypatch.setattr(op, "_sdpa", lambda *a, **kw: pytest.fail("the plan was taken") if not kw else
                        F.scaled_dot_product_attention(*a, **kw))
    mask = torch.ones(17, 17, dtype=torch.bool).tril()
    out = attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True))


def test_our_kernel_is_planned_but_runs_only_after_the_support_check():
    """A plan naming our kernel is not trusted on its own: a call of that class that the check refuses (here
    CPU tensors, which the fast check never accepts) takes the full path and never reaches the planted runner."""
    q, k, v = _qkv()
    calls = []
    PLANS[_key(q, k, False)] = lambda *a: calls.append(a) or pytest.fail("the unchecked runner ran")
    out = attention(q, k, v, enable_gqa=True)
    assert not calls
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
    assert (out.float() - ref).abs().max() < 2e-2


def test_runner_for_records_the_class_it_served():
    """Under the interpreter our default config serves: runner_for records its runner for the op's class."""
    q, k, v = _qkv(lq=5, s=29)
    run = runner_for(q, k, False, False, v)
    assert PLANS[_key(q, k, False)] is run
    assert runner_for(q, k, True, True, v) is not None  # a CausalBias class is not a plan (the op never looks)
    assert len(PLANS) == 1
    clear_cache()
    assert not PLANS
