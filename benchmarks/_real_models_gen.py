"""The measurements of benchmarks/real_models.py: model configs, building, timing, prefill, generate() and the
teacher-forced decode comparison. Every function takes what it needs (torch, transformers, the integration
module ``fct``) as arguments, so that importing this module imports nothing heavy."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

MODELS = ("llama3-8b", "qwen2.5-7b", "gemma2-9b", "gpt2")
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
# transformers' reference per model: Gemma-2 softcaps its attention logits, which sdpa cannot do (transformers
# 5.24 marks Gemma-2 `_supports_sdpa = False`; 5.17 runs sdpa and silently drops the softcap): its reference is
# "eager", the only exact path transformers has for it (besides FlashAttention and flex).
REFERENCE = {"gemma2-9b": "eager"}
DESCRIPTION = {
    "llama3-8b": "Llama-3-8B: hidden 4096, 32/8 heads, D 128, MLP 14336, vocab 128256, rope theta 5e5",
    "qwen2.5-7b": "Qwen2.5-7B: hidden 3584, 28/4 heads, D 128, MLP 18944, vocab 152064, q/k/v bias, rope theta 1e6,"
                  " no sliding window (use_sliding_window=False as the released config)",
    "gemma2-9b": "Gemma-2-9B: hidden 3584, 16/8 heads, D 256, MLP 14336, vocab 256000, attention logit softcap 50,"
                 " final softcap 30, sliding window 4096 on alternate layers (the released config)",
    "gpt2": "GPT-2 medium widths: hidden 1024, 16/16 heads, D 64, vocab 50257 (learned positions sized to the"
            " longest sequence)",
}


def reference(model_name: str) -> str:
    return REFERENCE.get(model_name, "sdpa")


def config_for(transformers, name: str, layers: int, max_len: int, tiny: bool = False):
    """The transformers config of ``name`` with ``layers`` decoder layers (``tiny``: the same class and features
    at toy widths, for CPU smoke runs: Gemma-2's window shrinks to 8 so that sliding layers really mask)."""
    if name == "llama3-8b":
        size = (dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
                     vocab_size=128) if tiny else
                dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     intermediate_size=14336, vocab_size=128256, rope_theta=500000.0))
        return transformers.LlamaConfig(num_hidden_layers=layers, max_position_embeddings=max(max_len, 8192), **size)
    if name == "qwen2.5-7b":
        size = (dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                     vocab_size=128) if tiny else
                dict(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944,
                     vocab_size=152064, rope_theta=1000000.0))
        return transformers.Qwen2Config(num_hidden_layers=layers, max_position_embeddings=max(max_len, 32768),
                                        use_sliding_window=False, sliding_window=131072, max_window_layers=28,
                                        rms_norm_eps=1e-6, **size)
    if name == "gemma2-9b":
        size = (dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
                     vocab_size=128, sliding_window=8, query_pre_attn_scalar=16) if tiny else
                dict(hidden_size=3584, num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                     intermediate_size=14336, vocab_size=256000, sliding_window=4096, query_pre_attn_scalar=256))
        return transformers.Gemma2Config(num_hidden_layers=layers, max_position_embeddings=max(max_len, 8192),
                                         attn_logit_softcapping=50.0, final_logit_softcapping=30.0, **size)
    if name == "gpt2":
        size = dict(n_embd=64, n_head=4, vocab_size=128) if tiny else dict(n_embd=1024, n_head=16, vocab_size=50257)
        return transformers.GPT2Config(n_layer=layers, n_positions=max(max_len, 1024), **size)
    raise ValueError(f"unknown model {name!r}")


@contextmanager
def default_dtype(torch, dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build(torch, transformers, config, dtype, device: str, implementation: str):
    """The model with seeded random weights, created on ``device`` in ``dtype`` (through the default dtype:
    fp32 buffers such as RoPE's stay fp32, as with ``from_pretrained(dtype=...)``), eval mode."""
    torch.manual_seed(0)
    with torch.device(device), default_dtype(torch, dtype):
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=implementation)
    if model.dtype != dtype:
        model = model.to(dtype)
    return model.eval()


def cache_keyword(model) -> str:
    """The forward's cache argument: "cache" from transformers 5.2x, "past_key_values" before (the GPU's 5.17)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median": round(statistics.median(ordered), 4), "p95": round(p95, 4), "n": len(ordered)}


def rel_l2(torch, out, ref) -> float:
    out, ref = out.float(), ref.float()
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def run_ms(torch, device: str, run) -> float:
    """Milliseconds of one ``run()``: CUDA events on the GPU, the wall clock elsewhere."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    run()
    return 1e3 * (time.perf_counter() - t0)


def wall_s(torch, device: str, run) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


@contextmanager
def offered(transformers, fct, name: str):
    """While the block runs, ``name`` is a spy around the integration's function that counts the calls offered
    without a mask (the calls sdpa would run unmasked, with ``is_causal``) and how many of them were served, and
    the calls with a mask that were served anyway (a mask known plain causal from how it was built). For untimed
    runs only: it costs host time."""
    counts = {"unmasked_calls": 0, "unmasked_served": 0, "masked_calls": 0, "masked_served": 0}

    def spy(module, query, key, value, attention_mask, *args, **kwargs):
        before = fct.stats()["fallback"]
        out = fct.attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
        kind = "unmasked" if attention_mask is None else "masked"
        counts[kind + "_calls"] += 1
        counts[kind + "_served"] += fct.stats()["fallback"] == before
        return out

    transformers.AttentionInterface.register(name, spy)
    try:
        yield counts
    finally:
        transformers.AttentionInterface.register(name, fct.attention_forward)


def served(stats: dict, counts: dict | None = None) -> dict:
    """What served the tuned implementation's calls: the integration's stats, shares per phase, and the share
    of the calls offered without a mask that were served."""
    def share(part, whole):
        return round(part / whole, 4) if whole else None

    n = stats["tuned"] + stats["backend"]
    out = {"calls": stats["calls"], "served": n, "share": share(n, stats["calls"]), "tuned_kernel": stats["tuned"],
           "tuned_backend": stats["backend"], "fallback": stats["fallback"], "by_candidate": stats["by_candidate"],
           "by_source": stats["by_source"], "fallback_reasons": stats["fallback_reasons"],
           "by_phase": {p: {**c, "share": share(c["served"], c["calls"])} for p, c in stats["by_phase"].items()}}
    if counts is not None:
        out["unmasked"] = {"calls": counts["unmasked_calls"], "served": counts["unmasked_served"],
                           "share": share(counts["unmasked_served"], counts["unmasked_calls"])}
        out["masked"] = {"calls": counts["masked_calls"], "served": counts["masked_served"]}
    return out


def prefill_case(torch, transformers, fct, ctx, model, batch: int, seq: int) -> dict:
    """One forward of B x S tokens (no cache, no padding): tokens/s tuned vs reference (interleaved rounds,
    ``logits_to_keep=1`` as generate's prefill), logits of every position compared, what served the calls."""
    name, ref, device = ctx["name"], ctx["reference"], ctx["device"]
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    with torch.no_grad():
        fct.set_implementation(model, ref)
        expected = model(input_ids=ids, use_cache=False).logits
        fct.set_implementation(model, name)
        fct.reset_stats()
        with offered(transformers, fct, name) as counts:
            out = model(input_ids=ids, use_cache=False).logits
        what = served(fct.stats(), counts)
        rel, max_abs = rel_l2(torch, out, expected), float((out.float() - expected.float()).abs().max())
        del out, expected
        times: dict[str, list[float]] = {name: [], ref: []}
        for round_ in range(ctx["warmup"] + ctx["iters"]):
            for impl in (name, ref):
                fct.set_implementation(model, impl)
                ms = run_ms(torch, device, lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1))
                if round_ >= ctx["warmup"]:
                    times[impl].append(ms)
    med = {impl: statistics.median(t) for impl, t in times.items()}
    rate = {impl: round(batch * seq / (m / 1e3), 1) for impl, m in med.items()}
    tol = ctx["tolerance"]
    return {"tuned_ms": summary(times[name]), "reference_ms": summary(times[ref]),
            "tokens_per_s": {"tuned": rate[name], "reference": rate[ref]},
            "speedup": round(med[ref] / med[name], 4), "served": what,
            "logits": {"rel_l2": rel, "max_abs": max_abs, "tolerance_rel_l2": tol, "passed": rel <= tol}}


def teacher_forced_case(torch, transformers, fct, ctx, model, batch: int, prompt: int, steps: int) -> dict:
    """A prefill of the prompt, then ``steps - 1`` one-token steps, each implementation on its own dynamic cache,
    both fed the reference's greedy token: the relative L2 difference of the last position's logits per step
    against the dtype's tolerance. Random weights give near-tied logits, so free-running tokens would diverge
    on a rounding; fed the same tokens, the two runs see the same inputs at every step."""
    name, ref, device = ctx["name"], ctx["reference"], ctx["device"]
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt), device=device)
    caches = {impl: transformers.DynamicCache(config=model.config) for impl in (name, ref)}
    key = cache_keyword(model)

    def step(impl, inputs):
        fct.set_implementation(model, impl)
        return model(input_ids=inputs, use_cache=True, logits_to_keep=1, **{key: caches[impl]}).logits[:, -1]

    diffs = []
    fct.reset_stats()
    with torch.no_grad(), offered(transformers, fct, name) as counts:
        inputs = ids
        for _ in range(steps):
            expected, out = step(ref, inputs), step(name, inputs)
            diffs.append(rel_l2(torch, out, expected))
            inputs = expected.argmax(-1, keepdim=True)
    worst, tol = max(diffs), ctx["tolerance"]
    return {"steps": steps, "rel_l2_per_step": [round(d, 7) for d in diffs], "max_rel_l2": worst,
            "worst_step": diffs.index(worst), "tolerance_rel_l2": tol, "passed": worst <= tol,
            "served": served(fct.stats(), counts)}


def generate_kwargs(transformers, ctx, mode: str, new: int, prompt) -> dict:
    """generate()'s arguments for ``mode``: "dynamic" (the default dynamic cache, eager) or "static"
    (``cache_implementation="static"``: on a GPU transformers then compiles the decoding steps itself,
    ``torch.compile(model.__call__, mode="reduce-overhead")`` through its default ``CompileConfig``; prefill
    stays eager). ``--no-compile``, and the stats runs, keep static decoding eager. On the CPU, compile only
    happens when asked for, so a CPU run passes a ``CompileConfig`` with the "eager" backend."""
    kw = {"attention_mask": prompt.new_ones(prompt.shape), "max_new_tokens": new, "min_new_tokens": new,
          "do_sample": False, "pad_token_id": 0}
    if mode == "static":
        kw["cache_implementation"] = "static"
        if ctx["compile"] and ctx["device"] != "cuda":
            config = transformers.CompileConfig(backend="eager", mode=None)
            config._compile_all_devices = True
            kw["compile_config"] = config
    if mode == "dynamic" or not ctx["compile"]:
        kw["disable_compile"] = True
    return kw


def generate_case(torch, transformers, fct, ctx, model, batch: int, prompt_len: int, new: int, mode: str) -> dict:
    """Greedy generate() tokens/s, tuned vs reference: a warm-up run each (compiles, for a compiled static
    cache), then ``gen_runs`` interleaved rounds; tokens/s = B x new tokens / median wall time of generate()
    (its prefill included). What served the tuned calls comes from one more, uncompiled, run (a compiled
    graph counts nothing)."""
    name, ref, device = ctx["name"], ctx["reference"], ctx["device"]
    prompt = torch.randint(3, model.config.vocab_size, (batch, prompt_len), device=device)
    kw = generate_kwargs(transformers, ctx, mode, new, prompt)

    def gen(impl, **extra):
        fct.set_implementation(model, impl)
        return model.generate(prompt, **{**kw, **extra})

    with torch.no_grad():
        fct.reset_stats()
        with offered(transformers, fct, name) as counts:
            gen(name, disable_compile=True)
        what = served(fct.stats(), counts)
        warm = {impl: round(wall_s(torch, device, lambda impl=impl: gen(impl)), 3) for impl in (name, ref)}
        runs: dict[str, list[float]] = {name: [], ref: []}
        for _ in range(ctx["gen_runs"]):
            for impl in (name, ref):
                runs[impl].append(wall_s(torch, device, lambda impl=impl: gen(impl)))
    rate = {impl: round(batch * new / statistics.median(r), 2) for impl, r in runs.items()}
    return {"mode": mode, "compiled": mode == "static" and ctx["compile"],
            "tokens_per_s": {"tuned": rate[name], "reference": rate[ref]},
            "speedup": round(rate[name] / rate[ref], 4),
            "seconds": {"tuned": summary(runs[name]), "reference": summary(runs[ref])},
            "warmup_s": {"tuned": warm[name], "reference": warm[ref]}, "served": what}
