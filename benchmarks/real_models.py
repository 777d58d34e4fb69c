"""Tuned attention inside real transformers models (random weights, no downloads), against the same model on sdpa.

    python benchmarks/real_models.py --out results/real_models.json [--db CACHE] [--layers 4] [--generate]

Models (transformers configs, random weights): "llama3-8b" (Llama-3-8B shape: hidden 4096, 32 query / 8 kv
heads, head dim 128, MLP 14336, vocab 128256), "llama2-7b" (32/32 heads, head dim 128, MLP 11008, vocab
32000), "gpt2" (GPT-2 small: 12/12 heads, head dim 64, hidden 768, vocab 50257; learned positions sized to
the longest shape). Only ``--layers`` decoder layers are built (default 4) to save time and memory: the
per-layer cost, and so attention's share of a layer, is the full model's; the share of the whole forward is
smaller than in the full model because the embedding and the LM head weigh more next to 4 layers.

Per model, dtype and (B, S) prefill shape (one forward, ``use_cache=False``, eval, no grad, no padding):
- median / P95 of ``--iters`` CUDA-event-timed forwards after ``--warmup``, on the tuned implementation
  ("fc_tuned") and on "sdpa", interleaved (one forward of each per round);
- attention time = forward − forward with attention replaced by a function returning zeros (same masks,
  projections, RoPE and MLPs; only the attention kernel is gone), its share of the forward, and the
  attention-only speedup sdpa/tuned derived from it;
- what served each attention call (integration stats: tuned kernel / tuned backend / sdpa fallback, by
  candidate, and by table source "exact"/"shipped"/"nearest"/"default"), for one forward;
- logits of tuned vs sdpa: max |diff|, relative L2, argmax agreement.
``--generate``: llama3-8b, greedy decoding of ``--new-tokens`` tokens with the default dynamic cache: tokens/s
(median of ``--gen-runs``), identical-token check (first divergence and logit difference up to it otherwise),
share of decode attention calls served. Writes one JSON (``--out``) with provenance; prints a table last.
A failure is recorded with its reason and the run goes on.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

MODELS = ("llama3-8b", "llama2-7b", "gpt2")
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
DEVICE = "cuda"
ZERO = "bench_zero_attention"  # attention replaced by zeros (for the attention-time estimate)
NOTE = ("Only --layers decoder layers were built (the full models were not, to save time and memory): per layer, "
        "attention's share is the same as in the full model; of the whole forward it is smaller here, since the "
        "embedding and LM head weigh more next to few layers. Attention time = forward minus the forward with "
        "attention returning zeros.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("real_models.json"), help="JSON file to write")
    p.add_argument("--db", type=Path, help="tuning cache the tuned op serves from (sets AUTOTUNE_DB)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers built per model (default 4)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--dtypes", default="bf16,fp16", help="comma list of bf16, fp16")
    p.add_argument("--shapes", default="1x512,4x2048,1x8192", help="comma list of BxS prefill shapes")
    p.add_argument("--iters", type=int, default=10, help="timed forwards per variant (>= 10 recommended)")
    p.add_argument("--warmup", type=int, default=3, help="untimed forwards per variant first")
    p.add_argument("--no-attention-share", action="store_true", help="skip the zero-attention forwards")
    p.add_argument("--generate", action="store_true", help="also time greedy decoding (llama3-8b)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run (default 64)")
    p.add_argument("--prompt", type=int, default=512, help="prompt length for --generate")
    p.add_argument("--gen-runs", type=int, default=3, help="timed generate runs per implementation")
    p.add_argument("--gen-dtype", default="bf16", choices=sorted(DTYPES), help="dtype for --generate")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes.split(",") if s]
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; known: {', '.join(MODELS)}")
    for d in args.dtypes:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r}; known: bf16, fp16")
    return args


def config_for(transformers, name: str, layers: int, max_len: int):
    """The transformers config of ``name`` with ``layers`` decoder layers."""
    if name == "llama3-8b":
        return transformers.LlamaConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                        intermediate_size=14336, vocab_size=128256, num_hidden_layers=layers,
                                        max_position_embeddings=max_len)
    if name == "llama2-7b":
        return transformers.LlamaConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32,
                                        head_dim=128, intermediate_size=11008, vocab_size=32000,
                                        num_hidden_layers=layers, max_position_embeddings=max_len)
    return transformers.GPT2Config(n_embd=768, n_head=12, n_layer=layers, n_positions=max(max_len, 1024),
                                   vocab_size=50257)


@contextmanager
def default_dtype(torch, dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build(torch, transformers, config, dtype):
    """The model with random weights, created on the GPU in ``dtype`` (through the default dtype: the keyword's
    name changed across transformers versions; buffers made in fp32 on purpose, such as RoPE's, stay fp32 as in
    ``from_pretrained(dtype=...)``), eval mode, on sdpa."""
    torch.manual_seed(0)
    with torch.device(DEVICE), default_dtype(torch, dtype):
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if model.dtype != dtype:  # a version that pinned another dtype
        model = model.to(dtype)
    return model.eval()


def zero_attention(module, query, key, value, attention_mask, **kwargs):
    """An attention function that does no attention: zeros of the output's shape, (B, L, H, D)."""
    b, h, length, _ = query.shape
    return query.new_zeros(b, length, h, value.shape[-1]), None


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median": round(statistics.median(ordered), 4), "p95": round(p95, 4), "n": len(ordered)}


def timed_rounds(torch, model, fct, variants: list[str], run, warmup: int, iters: int) -> dict[str, list[float]]:
    """Milliseconds of ``run()`` per variant: ``warmup`` then ``iters`` rounds of one run of each (interleaved,
    so that clock or thermal drift hits every variant alike), CUDA events around each run."""
    times: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(warmup + iters):
        for variant in variants:
            fct.set_implementation(model, variant)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            run()
            end.record()
            end.synchronize()
            if round_ >= warmup:
                times[variant].append(start.elapsed_time(end))
    return times


def served_share(s: dict) -> dict:
    served = s["tuned"] + s["backend"]
    return {"calls": s["calls"], "served": served, "share": round(served / s["calls"], 4) if s["calls"] else None,
            "tuned_kernel": s["tuned"], "tuned_backend": s["backend"], "fallback": s["fallback"],
            "by_candidate": s["by_candidate"], "by_source": s["by_source"],
            "fallback_reasons": s["fallback_reasons"]}


def compare_logits(torch, out, ref, dtype: str) -> dict:
    """max |diff|, relative L2, argmax agreement; and the agreement where sdpa's top two logits are further
    apart than the gate's tolerance for ``dtype`` allows (random weights give many near-ties that rounding flips)."""
    from flashcore.autotune import TOLERANCES

    tol = TOLERANCES[dtype]
    out, ref = out.float(), ref.float()
    rel = torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30)
    agree = out.argmax(-1) == ref.argmax(-1)
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * (tol.atol + tol.rtol * top2[..., 0].abs())
    return {"max_abs": float((out - ref).abs().max()), "rel_l2": float(rel),
            "argmax_agree": float(agree.float().mean()),
            "clear_positions": float(clear.float().mean()),
            "argmax_agree_clear": float(agree[clear].float().mean()) if bool(clear.any()) else None}


def prefill_case(torch, fct, name, model, batch, seq, args) -> dict:
    """One model, dtype and shape: correctness, what served, and timings."""
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=DEVICE)
    with torch.no_grad():
        def run():
            return model(input_ids=ids, use_cache=False).logits
        fct.set_implementation(model, "sdpa")
        ref = run()
        fct.set_implementation(model, name)
        fct.reset_stats()
        out = run()
        served = served_share(fct.stats())
        logits = compare_logits(torch, out, ref, str(model.dtype).removeprefix("torch."))
        del out, ref
        variants = [name, "sdpa"] + ([] if args.no_attention_share else [ZERO])
        times = timed_rounds(torch, model, fct, variants, run, args.warmup, args.iters)
    med = {v: statistics.median(t) for v, t in times.items()}
    row = {"tuned_ms": summary(times[name]), "sdpa_ms": summary(times["sdpa"]),
           "speedup": round(med["sdpa"] / med[name], 4), "served": served, "logits": logits}
    if ZERO in med:
        attn = {"tuned": med[name] - med[ZERO], "sdpa": med["sdpa"] - med[ZERO]}
        row["zero_attention_ms"] = summary(times[ZERO])
        row["attention_ms"] = {k: round(v, 4) for k, v in attn.items()}
        row["attention_ms_per_layer"] = {k: round(v / args.layers, 4) for k, v in attn.items()}
        # None where the difference is within timing noise (attention too small a part of the forward to see)
        row["attention_share"] = {k: round(attn[k] / med[v], 4) if attn[k] > 0 else None
                                  for k, v in (("tuned", name), ("sdpa", "sdpa"))}
        row["attention_speedup"] = round(attn["sdpa"] / attn["tuned"], 4) if min(attn.values()) > 0 else None
    return row


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]


def free(torch) -> None:
    gc.collect()
    torch.cuda.empty_cache()


def generate_case(torch, transformers, fct, name, args) -> dict:
    """Greedy decoding on llama3-8b (built here, freed after): see :func:`measure_generate`."""
    dtype = getattr(torch, DTYPES[args.gen_dtype])
    model = build(torch, transformers, config_for(transformers, "llama3-8b", args.layers,
                                                  args.prompt + args.new_tokens), dtype)
    try:
        return measure_generate(torch, fct, name, model, args)
    finally:
        del model
        free(torch)


def measure_generate(torch, fct, name, model, args) -> dict:
    """tokens/s tuned vs sdpa, identical tokens (else the first divergence), decode calls served."""
    prompt = torch.randint(3, model.config.vocab_size, (1, args.prompt), device=DEVICE)
    kw = {"attention_mask": torch.ones_like(prompt), "max_new_tokens": args.new_tokens,
          "min_new_tokens": args.new_tokens, "do_sample": False, "pad_token_id": 0}

    def gen(impl: str, **extra):
        fct.set_implementation(model, impl)
        with torch.no_grad():
            return model.generate(prompt, **kw, **extra)

    ref = gen("sdpa", return_dict_in_generate=True, output_logits=True)
    fct.reset_stats()
    out = gen(name, return_dict_in_generate=True, output_logits=True)
    stats = fct.stats()
    new_ref, new_out = ref.sequences[0, args.prompt:], out.sequences[0, args.prompt:]
    same = bool(torch.equal(new_ref, new_out))
    first = None if same else int((new_ref != new_out).nonzero()[0, 0])
    upto = len(out.logits) if first is None else first + 1  # the steps up to and including the divergence
    logit_diff = max(float((a.float() - b.float()).abs().max())
                     for a, b in zip(out.logits[:upto], ref.logits[:upto]))
    del ref, out
    rates = {}
    for impl in (name, "sdpa"):
        gen(impl)  # warm-up
        runs = []
        for _ in range(args.gen_runs):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            gen(impl)
            torch.cuda.synchronize()
            runs.append(args.new_tokens / (time.perf_counter() - t0))
        rates[impl] = runs
    decode = stats["by_phase"]["decode"]
    return {"model": "llama3-8b", "dtype": args.gen_dtype, "layers": args.layers,
            "prompt": args.prompt, "new_tokens": args.new_tokens,
            "tokens_per_s_is": "new tokens / wall time of generate(), the prompt's prefill included",
            "tokens_per_s": {"tuned": round(statistics.median(rates[name]), 2),
                             "sdpa": round(statistics.median(rates["sdpa"]), 2)},
            "tokens_per_s_runs": {"tuned": rates[name], "sdpa": rates["sdpa"]},
            "identical_tokens": same, "first_divergence": first, "max_logit_diff_until_divergence": logit_diff,
            "decode_calls": decode["calls"], "decode_served": decode["served"],
            "decode_share": round(decode["served"] / decode["calls"], 4) if decode["calls"] else None,
            "prefill": stats["by_phase"]["prefill"], "served": served_share(stats)}


def table(rows: list[dict], gen: dict | None) -> str:
    head = (f"{'model':<10} {'dtype':<5} {'BxS':>7} {'tuned ms':>9} {'sdpa ms':>9} {'speedup':>7} {'attn%':>6} "
            f"{'attn x':>6} {'served':>7} {'max|dL|':>8} {'argmax':>7}  candidates")
    lines = [head, "-" * len(head)]
    for r in rows:
        label = f"{r['model']:<10} {r['dtype']:<5} {r['batch']}x{r['seq']:<5}"
        if "error" in r:
            lines.append(f"{label} FAILED: {r['error']}")
            continue
        share = r.get("attention_share", {}).get("sdpa")
        attn_x = r.get("attention_speedup")
        lines.append(f"{label} {r['tuned_ms']['median']:>9.3f} {r['sdpa_ms']['median']:>9.3f} {r['speedup']:>7.3f} "
                     f"{'-' if share is None else f'{100 * share:.1f}':>6} "
                     f"{'-' if attn_x is None else f'{attn_x:.2f}':>6} {100 * (r['served']['share'] or 0):>6.1f}% "
                     f"{r['logits']['max_abs']:>8.2e} {100 * r['logits']['argmax_agree']:>6.2f}%  "
                     f"{','.join(f'{k}:{v}' for k, v in r['served']['by_candidate'].items()) or '-'}")
    if gen is not None:
        if "error" in gen:
            lines.append(f"generate: FAILED: {gen['error']}")
        else:
            t = gen["tokens_per_s"]
            where = "" if gen["identical_tokens"] else f" (first divergence at new token {gen['first_divergence']})"
            lines.append(f"generate llama3-8b {gen['dtype']} prompt {gen['prompt']} +{gen['new_tokens']}: tuned "
                         f"{t['tuned']} tok/s, sdpa {t['sdpa']} tok/s; identical tokens: {gen['identical_tokens']}"
                         f"{where}; decode calls served {gen['decode_served']}/{gen['decode_calls']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.db is not None:  # before flashcore.autotune is imported: the op reads it on first lookup
        os.environ["AUTOTUNE_DB"] = str(args.db.expanduser().resolve())
    import torch
    import transformers
    from flashcore.autotune.core.profiles import cuda_device
    from flashcore.autotune.core.toolchain import provenance
    from flashcore.autotune.integrations import transformers as fct
    from flashcore.autotune.runtime.paths import resolve_db

    device = cuda_device()
    if device is None:
        print("error: benchmarks/real_models.py needs a CUDA GPU", file=sys.stderr)
        return 2
    name = fct.register()
    transformers.AttentionInterface.register(ZERO, zero_attention)
    transformers.AttentionMaskInterface.register(ZERO, transformers.AttentionMaskInterface()["sdpa"])
    db = resolve_db(None)
    print(NOTE)
    state = "exists" if db.exists() else "absent: shipped tables or defaults only"
    print(f"tuned implementation {name!r}; cache {db} ({state});"
          f" transformers {transformers.__version__}, torch {torch.__version__}, GPU {device[0]} ({device[1]})",
          flush=True)
    result = {"provenance": provenance(*device), "transformers": transformers.__version__, "db": str(db),
              "db_exists": db.exists(), "implementation": name, "note": NOTE,
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "prefill": [], "generate": None}
    max_len = max(s for _, s in args.shapes)
    sources: dict[str, int] = {}
    for model_name in args.models:
        for dt in args.dtypes:
            dtype = getattr(torch, DTYPES[dt])
            t0 = time.perf_counter()
            try:
                model = build(torch, transformers, config_for(transformers, model_name, args.layers, max_len), dtype)
            except Exception as exc:  # recorded: one model failing to build must not stop the others
                for b, s in args.shapes:
                    result["prefill"].append({"model": model_name, "dtype": dt, "batch": b, "seq": s,
                                              "error": "build: " + error_text(exc)})
                free(torch)
                continue
            for b, s in args.shapes:
                row = {"model": model_name, "dtype": dt, "batch": b, "seq": s, "layers": args.layers}
                try:
                    row.update(prefill_case(torch, fct, name, model, b, s, args))
                    for src, n in row["served"]["by_source"].items():
                        sources[src] = sources.get(src, 0) + n
                except Exception as exc:  # recorded (OOM, kernel error): the next shape still runs
                    row["error"] = error_text(exc)
                free(torch)
                result["prefill"].append(row)
                status = row.get("error") or (f"tuned {row['tuned_ms']['median']:.3f} ms, "
                                              f"sdpa {row['sdpa_ms']['median']:.3f} ms")
                print(f"  {model_name} {dt} {b}x{s}: {status}", flush=True)
            del model
            free(torch)
            print(f"{model_name} {dt}: {time.perf_counter() - t0:.1f} s", flush=True)
    if args.generate:
        try:
            result["generate"] = generate_case(torch, transformers, fct, name, args)
            for src, n in result["generate"]["served"]["by_source"].items():
                sources[src] = sources.get(src, 0) + n
        except Exception as exc:  # recorded
            result["generate"] = {"error": error_text(exc)}
    result["sources"] = sources
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    print(f"tables that served the tuned calls (by lookup source): {sources or 'none'}"
          f"{'' if sources.get('exact') or sources.get('shipped') else '  <- no tuned point matched exactly'}")
    print(NOTE)
    print(table(result["prefill"], result["generate"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
