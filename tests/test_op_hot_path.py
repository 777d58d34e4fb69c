"""The drop-in op's hot path (``dispatch.PLANS``): a call of a class seen before goes to SDPA exactly as made
where SDPA's own choice is served, and to our kernel only after the support check. The CUDA half of the path
(plans recorded by real calls, SDPA's backend pick) is covered in tests/test_gpu_serving.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flashcore.autotune import UnsupportedAttention, attention, clear_cache
from flashcore.autotune.runtime import op
from flashcore.autotune.runtime.dispatch import PLANS, TO_SDPA, plan_key, runner_for
from flashcore.kernels.backends import BackendServer, Pinned


def _qkv(dtype=torch.float16, b=3, hq=6, hkv=3, lq=17, s=17, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, lq, d, generator=gen).to(dtype)
    k, v = (torch.randn(b, hkv, s, d, generator=gen).to(dtype) for _ in range(2))
    return q, k, v


def _key(q, k, causal):
    """The class as the hot path builds it inline (checked against plan_key, which runner_for records)."""
    s, lq = k.shape[2], q.shape[2]
    key = (q.shape, k.shape[1], s if s == lq else -(1 << (s - 1).bit_length()), q.dtype, causal)
    assert key == plan_key(q, k, causal)
    return key


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


def test_a_class_is_one_plan_whatever_q_strides():
    """q's strides are not in the class: a transposed q of the same shape takes the same plan (SDPA as made)."""
    q, k, v = _qkv()
    PLANS[_key(q, k, False)] = TO_SDPA
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # same shape, other strides
    assert qt.stride() != q.stride()
    out = attention(qt, k, v, enable_gqa=True)
    assert torch.equal(out, F.scaled_dot_product_attention(qt, k, v, enable_gqa=True))


class _Switches:
    """torch's four SDPA switches, recorded: what a Pinned plan sets while SDPA runs, and that it restores them."""

    def __init__(self, monkeypatch, state=(True, True, True, True), refuse=False):
        self.state, self.during, self.refuse = list(state), [], refuse
        getters = tuple((lambda i=i: self.state[i]) for i in range(4))
        setters = tuple((lambda on, i=i: self.state.__setitem__(i, on)) for i in range(4))
        monkeypatch.setattr("flashcore.kernels.backends._switches", lambda: (getters, setters))

    def sdpa(self, *args, **kwargs):
        self.during.append((tuple(self.state), args[3:], kwargs))
        if self.refuse and self.state == [False, False, False, True]:
            raise RuntimeError("No available kernel. Aborting execution.")
        return F.scaled_dot_product_attention(*args, **kwargs)


@pytest.mark.parametrize("flag, on", [("cudnn", (False, False, False, True)), ("flash", (True, False, False, False)),
                                      ("mem_efficient", (False, True, False, False))])
def test_a_pinned_plan_is_sdpa_as_made_with_one_switch_on(monkeypatch, flag, on):
    q, k, v = _qkv()
    sw = _Switches(monkeypatch, state=(True, False, True, True) if flag == "cudnn" else (True, True, True, True))
    before = list(sw.state)
    plan = Pinned(flag)
    plan._sdpa = sw.sdpa
    PLANS[_key(q, k, True)] = plan
    out = attention(q, k, v, is_causal=True, scale=0.25, enable_gqa=True)
    assert sw.during == [(on, (None, 0.0, True), {"scale": 0.25, "enable_gqa": True})]
    assert sw.state == before  # restored
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25, enable_gqa=True))


def test_a_pinned_plan_leaves_a_switched_off_backend_off(monkeypatch):
    """Inside ``sdpa_kernel`` without the served backend, the call is SDPA as made, switches untouched."""
    q, k, v = _qkv()
    sw = _Switches(monkeypatch, state=(True, True, True, False))
    plan = Pinned("cudnn")
    plan._sdpa = sw.sdpa
    PLANS[_key(q, k, False)] = plan
    attention(q, k, v, enable_gqa=True)
    assert [d[0] for d in sw.during] == [(True, True, True, False)]
    assert sw.state == [True, True, True, False]


def test_a_pinned_plan_whose_backend_refuses_falls_back_to_sdpa_as_made(monkeypatch):
    q, k, v = _qkv()
    sw = _Switches(monkeypatch, refuse=True)
    plan = Pinned("cudnn")
    plan._sdpa = sw.sdpa
    PLANS[_key(q, k, False)] = plan
    out = attention(q, k, v, enable_gqa=True)
    assert [d[0] for d in sw.during] == [(False, False, False, True), (True, True, True, True)]
    assert sw.state == [True, True, True, True]
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, enable_gqa=True))


def test_runner_for_plans_a_pinned_backend_as_pinned(monkeypatch):
    """A backend SDPA does not pick itself is recorded as a Pinned plan, SDPA's own pick as TO_SDPA."""
    q, k, v = _qkv()
    from flashcore.autotune.runtime import dispatch

    class Tuned:
        def __init__(self, server):
            self.server = server

        def runner(self):
            return self.server

    for server, expected in ((BackendServer("cudnn", False), Pinned), (BackendServer(None, False), str)):
        clear_cache()
        monkeypatch.setattr(dispatch, "get_kernel", lambda *a, **kw: Tuned(server))
        monkeypatch.setattr(dispatch, "_eager_choice", lambda tuned, lq, s: tuned)
        runner_for(q, k, False, False, v)
        assert type(PLANS[_key(q, k, False)]) is expected


class _Fake:
    """A CUDA tensor's attributes, as ``_planned_ok`` reads them (CUDA tensors cannot be made on the CPU)."""

    def __init__(self, shape, dtype=torch.float16, device="cuda:0", is_cuda=True, requires_grad=False):
        self.shape, self.dtype, self.device = torch.Size(shape), dtype, torch.device(device)
        self.is_cuda, self.requires_grad = is_cuda, requires_grad


_GOOD = dict(q=(3, 6, 17, 16), k=(3, 3, 40, 16), v=(3, 3, 40, 16))


@pytest.mark.parametrize("change", [
    None, {"q_is_cuda": False}, {"scale": 0.0}, {"scale": -1.0}, {"scale": 2.0 ** -30}, {"k": (2, 3, 40, 16)},
    {"v": (3, 3, 41, 16)}, {"k": (3, 3, 40, 8), "v": (3, 3, 40, 8)}, {"k": (3, 3, 0, 16), "v": (3, 3, 0, 16)},
    {"enable_gqa": False}, {"k_dtype": torch.bfloat16}, {"v_dtype": torch.float32}, {"k_device": "cuda:1"},
    {"v_device": "cpu"}, {"q_grad": True}])
def test_a_planned_call_is_checked_for_what_its_class_does_not_fix(change):
    """Each condition the plan's class leaves open refuses the call on its own; the unchanged call passes."""
    c = change or {}
    q = _Fake(c.get("q", _GOOD["q"]), is_cuda=c.get("q_is_cuda", True), requires_grad=c.get("q_grad", False))
    k = _Fake(c.get("k", _GOOD["k"]), dtype=c.get("k_dtype", torch.float16), device=c.get("k_device", "cuda:0"))
    v = _Fake(c.get("v", _GOOD["v"]), dtype=c.get("v_dtype", torch.float16), device=c.get("v_device", "cuda:0"))
    ok = op._planned_ok(q, k, v, q.shape, k.shape, c.get("enable_gqa", True), c.get("scale", None))
    assert ok is (change is None)
