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


# The verdict on a case from its per-round ratios (tuned rate / reference rate, each round timing both back to
# back): "slower" only where every round's ratio is below 1 (max < 1), "faster" where every one is above (min > 1),
# "within noise" otherwise; "too few rounds" under MIN_ROUNDS (one round has no spread). Read as a sign test:
# were the two equally fast, every one of n rounds would fall on the same side with probability 2^-n per side
# (1/32 at the default 5 generate rounds, 1/1024 at 10 prefill iterations), so a one-sided verdict is signal.
VERDICTS = ("faster", "slower", "within noise", "too few rounds")
MIN_ROUNDS = 3
VERDICT_RULE = ("per round, both implementations timed back to back (the order alternating, the tuned first in "
                "round 0); ratio = tuned rate / reference rate of that round; speedup = the median ratio; verdict: "
                "'slower' if the max ratio < 1, 'faster' if the min ratio > 1, else 'within noise'; "
                f"'too few rounds' under {MIN_ROUNDS} rounds")


def verdict(ratios, min_rounds: int = MIN_ROUNDS) -> str:
    """The verdict of ``ratios`` (per-round tuned / reference rates): see VERDICTS and VERDICT_RULE."""
    ratios = list(ratios)
    if len(ratios) < min_rounds:
        return "too few rounds"
    if max(ratios) < 1.0:
        return "slower"
    if min(ratios) > 1.0:
        return "faster"
    return "within noise"


def ratio_stats(ratios: list[float]) -> dict:
    """Per-round ratios in the order measured, their median, min, max and quartiles, and the verdict."""
    ordered = sorted(ratios)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"median": round(statistics.median(ordered), 4), "min": round(ordered[0], 4),
            "max": round(ordered[-1], 4), "q1": round(q1, 4), "q3": round(q3, 4), "rounds": len(ordered),
            "per_round": [round(r, 4) for r in ratios], "verdict": verdict(ratios)}


def paired_round(index: int, impls: tuple[str, str], time_one) -> tuple[float, float]:
    """One round: ``time_one(impl)`` of both implementations back to back, the first one first in even rounds
    and second in odd ones (so that neither always runs on the other's leftovers, clocks or caches); returns
    the two times in the order of ``impls`` (which may name the same implementation twice: an A/A control)."""
    order = (0, 1) if index % 2 == 0 else (1, 0)
    times = [0.0, 0.0]
    for slot in order:
        times[slot] = time_one(impls[slot])
    return times[0], times[1]


def alone_compiled(torch, model, impls: list[str], timed, runs: int) -> tuple[dict, list[list[float]]]:
    """Time compiled generate() of each of ``impls`` in its own block: dynamo's caches and transformers'
    compiled call forgotten first (``torch._dynamo.reset()``), one warm-up run (which compiles), then ``runs``
    timed runs. Interleaving two compiled implementations in one process is not fair: dynamo keeps both graphs
    for the one compiled function and checks the newest's guards first, so every decode step of the
    implementation compiled first pays a failed guard check (a tiny GPT-2 on the CPU: 5% slower compiled first,
    3% faster compiled second). Returns the warm-up seconds by implementation and each block's times."""
    warm, blocks = {}, []
    for impl in impls:
        torch._dynamo.reset()
        if "_compiled_call" in model.__dict__:
            del model._compiled_call  # transformers compiles model.__call__ again on the next generate()
        warm.setdefault(impl, round(timed(impl), 3))
        blocks.append([timed(impl) for _ in range(runs)])
    return warm, blocks


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
    """One forward of B x S tokens (no cache, no padding): tokens/s tuned vs reference (``logits_to_keep=1`` as
    generate's prefill), logits of every position compared, what served the calls. Timing: ``warmup`` untimed
    then ``iters`` timed rounds, each round one forward of each back to back (order alternating, CUDA events);
    ``speedup`` is the median of the per-round ratios (reference ms / tuned ms), ``ratio`` their spread and the
    verdict (VERDICT_RULE); ``speedup_of_medians`` the former figure (median reference ms / median tuned ms)."""
    name, ref, device = ctx["name"], ctx["reference"], ctx["device"]
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)

    def forward_ms(impl):
        fct.set_implementation(model, impl)
        return run_ms(torch, device, lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1))

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
        for round_ in range(-ctx["warmup"], ctx["iters"]):
            tuned_ms, ref_ms = paired_round(round_, (name, ref), forward_ms)
            if round_ >= 0:
                times[name].append(tuned_ms)
                times[ref].append(ref_ms)
    med = {impl: statistics.median(t) for impl, t in times.items()}
    rate = {impl: round(batch * seq / (m / 1e3), 1) for impl, m in med.items()}
    ratio = ratio_stats([r / t for t, r in zip(times[name], times[ref])])
    tol = ctx["tolerance"]
    return {"tuned_ms": summary(times[name]), "reference_ms": summary(times[ref]),
            "tokens_per_s": {"tuned": rate[name], "reference": rate[ref]},
            "speedup": ratio["median"], "ratio": ratio, "verdict": ratio["verdict"],
            "speedup_of_medians": round(med[ref] / med[name], 4), "served": what,
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
    cache), then ``gen_runs`` rounds, each timing one generate() of each back to back (order alternating);
    tokens/s = B x new tokens / wall time of generate() (its prefill included). ``speedup`` is the median of the
    per-round ratios (tuned rate / reference rate), ``ratio`` their spread and the verdict (VERDICT_RULE); a
    compiled static cache is timed one implementation at a time instead (``alone_compiled``), the i-th run of
    each paired;
    ``tokens_per_s`` (median time per implementation) and ``speedup_of_medians`` (their ratio, the former
    figure) stay. ``ctx["control"]``: each round also times the reference against itself the same way (an A/A
    pair right after the A/B pair), whose ratios show the run's own noise floor. What served the tuned calls
    comes from one more, uncompiled, run (a compiled graph counts nothing)."""
    name, ref, device = ctx["name"], ctx["reference"], ctx["device"]
    prompt = torch.randint(3, model.config.vocab_size, (batch, prompt_len), device=device)
    kw = generate_kwargs(transformers, ctx, mode, new, prompt)

    def gen(impl, **extra):
        fct.set_implementation(model, impl)
        return model.generate(prompt, **{**kw, **extra})

    def timed(impl):
        return wall_s(torch, device, lambda: gen(impl))

    pairs = {"main": (name, ref), **({"control": (ref, ref)} if ctx.get("control") else {})}
    compiled = mode == "static" and ctx["compile"]
    with torch.no_grad():
        fct.reset_stats()
        with offered(transformers, fct, name) as counts:
            gen(name, disable_compile=True)
        what = served(fct.stats(), counts)
        runs: dict[str, tuple[list[float], list[float]]] = {key: ([], []) for key in pairs}
        if compiled:  # one compiled implementation at a time: see alone_compiled
            warm, blocks = alone_compiled(torch, model, [name, ref, *([ref] if "control" in pairs else [])],
                                          timed, ctx["gen_runs"])
            runs["main"] = (blocks[0], blocks[1])
            if "control" in pairs:
                runs["control"] = (blocks[1], blocks[2])
        else:
            warm = {impl: round(timed(impl), 3) for impl in (name, ref)}
            for round_ in range(ctx["gen_runs"]):
                for key, impls in pairs.items():
                    a, b = paired_round(round_, impls, timed)
                    runs[key][0].append(a)
                    runs[key][1].append(b)

    def measured(a_runs, b_runs):
        rate = [round(batch * new / statistics.median(r), 2) for r in (a_runs, b_runs)]
        ratio = ratio_stats([tb / ta for ta, tb in zip(a_runs, b_runs)])  # rate a / rate b, same tokens
        return rate, ratio

    rate, ratio = measured(*runs["main"])
    row = {"mode": mode, "compiled": mode == "static" and ctx["compile"],
           "tokens_per_s": {"tuned": rate[0], "reference": rate[1]},
           "speedup": ratio["median"], "ratio": ratio, "verdict": ratio["verdict"],
           "speedup_of_medians": round(rate[0] / rate[1], 4),
           "seconds": {"tuned": summary(runs["main"][0]), "reference": summary(runs["main"][1])},
           "warmup_s": {"tuned": warm[name], "reference": warm[ref]}, "served": what}
    if "control" in runs:
        rate, ratio = measured(*runs["control"])
        row["control"] = {"implementation": ref, "what": f"{ref} against itself, timed as the A/B pair",
                          "tokens_per_s": {"a": rate[0], "b": rate[1]}, "speedup": ratio["median"],
                          "ratio": ratio, "verdict": ratio["verdict"],
                          "seconds": {"a": summary(runs["control"][0]), "b": summary(runs["control"][1])}}
    return row
