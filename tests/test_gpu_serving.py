"""On the GPU: the served path of the drop-in op for each kind of candidate (a backend, attention_fwd,
attention_kv decode, SDPA's own choice on a miss): the same output as the launcher, no host-device sync, CUDA
graph capture, torch.compile(mode="reduce-overhead", fullgraph=True), and decode over a growing cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flashcore.autotune import Point, attention, check, clear_cache, get_kernel
from flashcore.autotune.evaluation.pin import pin
from flashcore.kernels.attention_kv.fastlaunch import runners
from flashcore.kernels.attention_kv.launch import attention_kv

from _tiers import tiered

pytestmark = pytest.mark.gpu

# (name, point, pinned candidate or None for a miss)
CASES = [
    ("backend", Point(5, 7, 777, 64, True), "sdpa_cudnn"),
    ("flash", Point(4, 5, 300, 64, False), "sdpa_flash"),
    ("fwd", Point(3, 8, 333, 64, True, kv_heads=2), "attention_fwd"),
    ("kv-decode", Point(2, 32, 1, 128, True, "bfloat16", kv_heads=8, kv_len=2301, lower_right=True), "attention_kv"),
    ("kv-chunk", Point(1, 28, 100, 128, True, "bfloat16", kv_heads=4, kv_len=3001, lower_right=True), "attention_kv"),
    ("miss", Point(2, 6, 129, 96, False, "bfloat16", kv_heads=3), None),  # no table has head dim 96
]


CASE = {name: point for name, point, _ in CASES}


@pytest.fixture
def served_db(tmp_path, monkeypatch):
    db = tmp_path / "pinned.db"
    for _, point, kernel in CASES:
        if kernel is not None:
            pin(db, point, kernel)
    monkeypatch.setenv("AUTOTUNE_DB", str(db))
    clear_cache()
    return db


def inputs(point: Point, seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    dtype = getattr(torch, point.dtype)
    q = torch.randn(point.batch, point.heads, point.seq_len, point.head_dim, device="cuda", dtype=dtype,
                    generator=gen)
    k, v = (torch.randn(point.batch, point.kv_heads, point.kv_len, point.head_dim, device="cuda", dtype=dtype,
                        generator=gen) for _ in range(2))
    return q, k, v


def call(point: Point, q, k, v, compiling: bool = False, strict: bool = True):
    if point.lower_right and compiling:  # torch.compile cannot construct a CausalBias (SDPA's limit too): the op
        return torch.ops.flashcore.attention(q, k, v, True, None, True)
    if point.lower_right:
        from torch.nn.attention.bias import causal_lower_right

        return attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]), enable_gqa=True,
                         strict=strict)
    # strict=False takes the op's hot path (dispatch.PLANS) from the second call of a class on
    return attention(q, k, v, is_causal=point.causal, enable_gqa=point.kv_heads != point.heads, strict=strict)


def truth(point: Point, q, k, v):
    if point.lower_right:
        from torch.nn.attention.bias import causal_lower_right

        mask = causal_lower_right(q.shape[2], k.shape[2])._materialize(q.device)
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, enable_gqa=True)
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=point.causal, enable_gqa=True)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_served_kind_is_right_sync_free_and_capturable(served_db, case):
    name, point, kernel = case
    q, k, v = inputs(point)
    served = get_kernel(q.shape, q.dtype, point.causal, kv_heads=point.kv_heads, kv_len=point.kv_len,
                        lower_right=point.lower_right)
    assert served.kernel == (kernel or "sdpa") and served.source == ("exact" if kernel else "default")
    first = call(point, q, k, v)  # compiles and records the launch
    torch.cuda.synchronize()
    assert check(first, truth(point, q, k, v), point.dtype).passed
    call(point, q, k, v, strict=False)  # records the class's plan
    torch.cuda.set_sync_debug_mode("error")
    try:
        again = call(point, q, k, v)
        hot = call(point, q, k, v, strict=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(again, first) and torch.equal(hot, first)

    static = [t.clone() for t in (q, k, v)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call(point, *static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call(point, *static, strict=False)
    q2, k2, v2 = inputs(point, seed=1)
    for t, new in zip(static, (q2, k2, v2)):
        t.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, call(point, q2, k2, v2))


@pytest.mark.parametrize("case", tiered(  # a cold torch.compile each: the fast tier compiles three kinds
    CASES, [c[0] for c in CASES], fast=["backend", "fwd", "kv-decode"]))
def test_reduce_overhead_compile_has_no_graph_break(served_db, case):
    _, point, _ = case
    q, k, v = inputs(point)
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: call(point, q, k, v, compiling=True) * 2, mode="reduce-overhead",
                             fullgraph=True)
    for _ in range(3):  # warm-up runs, then graph replays
        out = compiled(q, k, v)
    torch.cuda.synchronize()
    assert torch.equal(out, call(point, q, k, v) * 2)


def test_decode_over_a_growing_cache_is_the_launcher_bit_for_bit(served_db):
    """Each step one token longer (new length, new strides): one compiled kernel per class, launched fast."""
    fwd, _ = runners()
    point = CASE["kv-decode"]
    config = get_kernel((point.batch, point.heads, 1, point.head_dim), torch.bfloat16, True, kv_heads=8,
                        kv_len=point.kv_len, lower_right=True).config
    q, k, v = inputs(point)
    hits = fwd.hits
    for s in range(point.kv_len - 40, point.kv_len):
        kk, vv = k[:, :, :s], v[:, :, :s]
        out = call(point, q, kk, vv)
        assert torch.equal(out, attention_kv(q, kk, vv, config, causal=True, lower_right=True))
    assert fwd.hits - hits >= 30  # at most a few specialization classes compiled: the rest launched fast


def test_the_hot_path_plans_sdpa_exactly_where_sdpa_picks_the_served_backend(served_db):
    from flashcore.autotune.runtime.dispatch import PLANS, TO_SDPA, plan_key
    from flashcore.kernels.backends import Pinned

    picks = {"sdpa_cudnn": 3, "sdpa_flash": 1}
    for name, point, kernel in CASES:
        if point.lower_right:  # CausalBias calls are not planned
            continue
        q, k, v = inputs(point)
        out = call(point, q, k, v, strict=False)
        plan = PLANS[plan_key(q, k, point.causal)]
        if kernel is None:
            assert plan is TO_SDPA, name
        elif kernel in picks:
            choice = int(torch._fused_sdp_choice(q, k, v, None, 0.0, point.causal,
                                                 enable_gqa=point.kv_heads != point.heads))
            assert (plan is TO_SDPA) == (choice == picks[kernel]), (name, choice)
            assert plan is TO_SDPA or type(plan) is Pinned, name
            launch = get_kernel(q.shape, q.dtype, point.causal, kv_heads=point.kv_heads).config
            assert launch == {}
            from flashcore.kernels.backends import call_with_only

            only = call_with_only(kernel.removeprefix("sdpa_").replace("efficient", "mem_efficient"),
                                  lambda: F.scaled_dot_product_attention(q, k, v, is_causal=point.causal,
                                                                         enable_gqa=point.kv_heads != point.heads))
            assert torch.equal(out, only), name  # the served backend's own result, whichever way it was called
            again = call(point, q, k, v, strict=False)  # through the plan (TO_SDPA or Pinned)
            assert torch.equal(again, only), name
        else:
            assert plan is not TO_SDPA and callable(plan), name


def test_a_miss_serves_sdpa_itself(served_db):
    point = CASE["miss"]
    q, k, v = inputs(point)
    out = attention(q, k, v, enable_gqa=True)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, enable_gqa=True))


transformers = pytest.importorskip("transformers")


@pytest.mark.slow  # transformers compiles the decode step twice (sdpa, then ours)
def test_static_cache_generate_compiled_matches_sdpa():
    """A tiny Llama with transformers' StaticCache, its decoding compiled by transformers itself (reduce-overhead:
    CUDA graphs) with fullgraph=True: our registered implementation breaks no graph (its masked static-cache
    decode steps go to transformers' sdpa) and gives sdpa's tokens."""
    from flashcore.autotune.integrations.transformers import register, set_implementation

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=256, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                                      intermediate_size=512, vocab_size=1000, num_hidden_layers=2)
    model = transformers.LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
    prompt = torch.randint(3, 1000, (1, 40), device="cuda")
    results = {}
    for impl in ("sdpa", register()):
        set_implementation(model, impl)
        torch._dynamo.reset()
        if hasattr(model, "_compiled_call"):
            del model._compiled_call  # transformers compiles again, for this implementation
        compile_config = transformers.CompileConfig(fullgraph=True, mode="reduce-overhead")
        with torch.no_grad():
            results[impl] = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                           cache_implementation="static", pad_token_id=0,
                                           compile_config=compile_config)
    assert torch.equal(*results.values())
