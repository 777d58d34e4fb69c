"""Tuned attention inside real transformers models (random weights, no downloads), against transformers' own.

    python benchmarks/real_models.py --out results/real_models.json [--db CACHE] [--layers 4]
        [--models llama3-8b,qwen2.5-7b,gemma2-9b,gpt2] [--dtypes bf16,fp16] [--shapes 1x512,4x2048,1x8192]
        [--gen-shapes 1x2048+64,16x1024+32] [--kinds prefill,teacher_forcing,generate] [--modes dynamic,static]
        [--gen-runs 5] [--control] [--no-compile] [--budget-s S] [--tiny] [--device cuda|cpu]

Models (benchmarks/_real_models_gen.py): "llama3-8b", "qwen2.5-7b", "gemma2-9b", "gpt2" (GPT-2 medium
widths), with the released configs' attention features (Qwen2.5 without sliding window; Gemma-2 with its
attention logit softcapping and alternate sliding-window layers). Only ``--layers`` decoder layers are built.
The reference is "sdpa", except for Gemma-2: sdpa cannot softcap, so its reference is "eager" (and its tuned
calls all fall back to the model's eager attention, each counted with its reason).

Per model and dtype (each a case, run in this order, JSON rewritten after each, a failure recorded with its
reason and the run going on; ``--budget-s``: cases that would start later are recorded as skipped):
- "prefill" per ``--shapes`` B x S: tokens/s (B·S / median forward, CUDA events; ``--iters`` rounds, each one
  forward of each implementation back to back), logits of every position compared (relative L2 against the
  dtype's tolerance), what served;
- "teacher_forcing" per ``--gen-shapes`` B x P+N: a prefill and N-1 one-token steps, both implementations fed
  the reference's greedy tokens: relative L2 of the logits per step, the worst against the dtype's tolerance
  (``flashcore.autotune.TOLERANCES[dtype].rel_l2``), and what served each phase;
- "generate" per gen shape, "dynamic" (default cache, eager) and "static" (``cache_implementation="static"``,
  which transformers compiles itself on a GPU with mode="reduce-overhead"; eager with ``--no-compile``): greedy
  tokens/s over ``--gen-runs`` rounds (default 5) after a warm-up (where compilation happens), each round one
  generate() of each implementation back to back; what served (uncompiled run). ``--control``: each round also
  times the reference against itself (an A/A pair: sdpa against sdpa, eager against eager for Gemma-2), so that
  the run shows its own noise floor (doubles the generate time).
Speed, prefill and generate alike: the order within a round alternates (the tuned first in round 0); the ratio of
a round is the tuned rate / the reference rate; ``speedup`` is the MEDIAN OF THE PER-ROUND RATIOS (before this,
the ratio of the two medians, still written as ``speedup_of_medians``); ``ratio`` holds the per-round ratios,
their min, max, quartiles and count; ``verdict``: "slower" only if every round's ratio is below 1 (max < 1),
"faster" if every one is above 1 (min > 1), else "within noise" ("too few rounds" under 3 rounds). The JSON's
``verdicts`` counts them per kind (and the A/A controls', with their widest spread).
"What served" is the integration's stats (by candidate, lookup source, fallback reason, phase) and the share of
the calls offered without a mask (those sdpa would run with ``is_causal``) that were served.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _real_models_gen as gen  # noqa: E402

NOTE = ("Only --layers decoder layers were built: per layer, attention's share is the full model's; of the whole "
        "forward it is smaller (the embedding and LM head weigh more next to few layers). generate() tokens/s count "
        "its prefill. Calls inside a compiled graph are not counted by the integration's stats: 'served' of a "
        "compiled case comes from an uncompiled run of the same generate(). speedup = the median of the per-round "
        "ratios (tuned rate / reference rate, both timed back to back each round, the order alternating); verdict: "
        "'slower' only if every round's ratio < 1, 'faster' if every one > 1, else 'within noise'.")
TINY_SHAPES, TINY_GEN = "1x16,2x24", "1x12+4,2x10+3"


def _shape(text: str) -> tuple[int, int]:
    b, s = text.lower().split("x")
    return int(b), int(s)


def _gen_shape(text: str) -> tuple[int, int, int]:
    shape, new = text.split("+")
    return (*_shape(shape), int(new))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("real_models.json"), help="JSON file to write")
    p.add_argument("--db", type=Path, help="tuning cache the tuned op serves from (sets AUTOTUNE_DB)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers built per model (default 4)")
    p.add_argument("--models", default=",".join(gen.MODELS), help=f"comma list of {', '.join(gen.MODELS)}")
    p.add_argument("--dtypes", default="bf16,fp16", help="comma list of bf16, fp16")
    p.add_argument("--shapes", help="comma list of BxS prefill shapes (default 1x512,4x2048,1x8192); '' for none")
    p.add_argument("--gen-shapes", help="comma list of BxP+N generate shapes (default 1x2048+64,16x1024+32)")
    p.add_argument("--iters", type=int, default=10, help="timed forwards per implementation")
    p.add_argument("--warmup", type=int, default=3, help="untimed forwards per implementation first")
    p.add_argument("--gen-runs", type=int, default=5, help="timed generate() rounds, each one run per implementation"
                   " back to back (default 5)")
    p.add_argument("--control", action="store_true", help="also time the reference against itself in each generate"
                   " round (A/A: the run's noise floor; doubles the generate time)")
    p.add_argument("--tf-steps", type=int, default=32, help="teacher-forced steps at most (default 32)")
    p.add_argument("--no-compile", action="store_true", help="static-cache generate() without torch.compile")
    p.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)  # the old opt-in: now the default
    p.add_argument("--kinds", default="prefill,teacher_forcing,generate", help="comma list of the kinds of case")
    p.add_argument("--modes", default="dynamic,static", help="generate() caches: comma list of dynamic, static")
    p.add_argument("--budget-s", type=float, help="skip (and record) the cases that would start after this")
    p.add_argument("--tiny", action="store_true", help="toy widths of the same model classes (CPU smoke test)")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda (cpu allowed with --tiny)")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    shapes = args.shapes if args.shapes is not None else (TINY_SHAPES if args.tiny else "1x512,4x2048,1x8192")
    gens = args.gen_shapes if args.gen_shapes is not None else (TINY_GEN if args.tiny else "1x2048+64,16x1024+32")
    try:
        args.shapes = [_shape(s) for s in shapes.split(",") if s]
        args.gen_shapes = [_gen_shape(s) for s in gens.split(",") if s]
    except ValueError:
        p.error("shapes are BxS (prefill) and BxP+N (generate), e.g. 1x512 and 1x2048+64")
    args.kinds, args.modes = [k for k in args.kinds.split(",") if k], [m for m in args.modes.split(",") if m]
    if set(args.kinds) - {"prefill", "teacher_forcing", "generate"} or set(args.modes) - {"dynamic", "static"}:
        p.error("--kinds takes prefill, teacher_forcing, generate; --modes dynamic, static")
    for m in args.models:
        if m not in gen.MODELS:
            p.error(f"unknown model {m!r}; known: {', '.join(gen.MODELS)}")
    for d in args.dtypes:
        if d not in gen.DTYPES:
            p.error(f"unknown dtype {d!r}; known: bf16, fp16")
    if args.iters < 1 or args.gen_runs < 1 or args.warmup < 0:
        p.error("--iters and --gen-runs take 1 or more, --warmup 0 or more")
    if args.device == "cpu" and not args.tiny:
        p.error("--device cpu needs --tiny (the real widths are for a GPU)")
    return args


def error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def plan(args) -> list[dict]:
    """Every case, in run order: per model and dtype, the prefill shapes, then per generate shape the
    teacher-forced comparison and generate() with the dynamic and the static cache."""
    cases = []
    for model in args.models:
        for dtype in args.dtypes:
            base = {"model": model, "dtype": dtype}
            cases += [{**base, "kind": "prefill", "batch": b, "seq": s} for b, s in args.shapes]
            for b, p, n in args.gen_shapes:
                shape = {"batch": b, "prompt": p, "new_tokens": n}
                cases.append({**base, "kind": "teacher_forcing", **shape})
                cases += [{**base, "kind": "generate", "mode": m, **shape} for m in args.modes]
    return [c for c in cases if c["kind"] in args.kinds]


def label(case: dict) -> str:
    shape = (f"{case['batch']}x{case['seq']}" if case["kind"] == "prefill"
             else f"{case['batch']}x{case['prompt']}+{case['new_tokens']}")
    mode = f" {case['mode']}" if "mode" in case else ""
    return f"{case['model']} {case['dtype']} {case['kind']}{mode} {shape}"


def run_case(torch, transformers, fct, ctx, model, case: dict) -> dict:
    if case["kind"] == "prefill":
        return gen.prefill_case(torch, transformers, fct, ctx, model, case["batch"], case["seq"])
    b, p, n = case["batch"], case["prompt"], case["new_tokens"]
    if case["kind"] == "teacher_forcing":
        return gen.teacher_forced_case(torch, transformers, fct, ctx, model, b, p, min(n, ctx["tf_steps"]))
    return gen.generate_case(torch, transformers, fct, ctx, model, b, p, n, case["mode"])


def free(torch, device: str, compiled: bool = False) -> None:
    """Release memory; ``compiled``: also the last model's compiled graphs (and their CUDA graph pools)."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def allow_recompiles(torch) -> None:
    """Room for every compiled variant of a model class's forward: transformers compiles ``model.__call__``,
    one code object per class, and each implementation, batch and cache length is a graph of its own (the
    default limit, 8, would silently leave later cases uncompiled)."""
    config = torch._dynamo.config
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, knob):
            setattr(config, knob, max(getattr(config, knob), 64))


def _fmt(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)


def verdicts(result: dict) -> dict:
    """Per kind (prefill, generate), how many measured cases got each verdict and which were slower or faster;
    "control": the same over the generate cases' A/A controls, with the widest spread of their ratios (the
    run's noise floor) and the controls whose verdict was not "within noise" (noise the rule did not absorb)."""
    out = {}
    for section in ("prefill", "generate"):
        rows = [r for r in result[section] if r["status"] == "ok" and "verdict" in r]
        out[section] = {**{v: sum(r["verdict"] == v for r in rows) for v in gen.VERDICTS}, "measured": len(rows),
                        "slower_cases": [label(r) for r in rows if r["verdict"] == "slower"],
                        "faster_cases": [label(r) for r in rows if r["verdict"] == "faster"]}
    controls = [r for r in result["generate"] if r["status"] == "ok" and "control" in r]
    out["control"] = {**{v: sum(r["control"]["verdict"] == v for r in controls) for v in gen.VERDICTS},
                      "measured": len(controls),
                      "min_ratio": min((r["control"]["ratio"]["min"] for r in controls), default=None),
                      "max_ratio": max((r["control"]["ratio"]["max"] for r in controls), default=None),
                      "not_within_noise": [label(r) for r in controls if r["control"]["verdict"] != "within noise"]}
    return out


def _spread(ratio: dict | None) -> str:
    return "-" if not ratio else f"{ratio['min']:.3f}-{ratio['max']:.3f}"


def _verdict_text(row: dict) -> str:
    return {"within noise": "noise", "too few rounds": "few"}.get(row.get("verdict"), row.get("verdict") or "-")


def table(result: dict) -> str:
    """The text table: per case the rates, speedup (the median per-round ratio), the min-max of the per-round
    ratios with their count, the verdict ("noise": within noise; "few": too few rounds), what served, and for
    prefill and teacher forcing the logits' relative L2; an A/A control's line under its generate case."""
    head = (f"{'case':<44} {'tuned tok/s':>12} {'ref tok/s':>12} {'speedup':>7} {'ratio min-max':>13} {'n':>3} "
            f"{'verdict':>7} {'served':>11} {'unmasked':>11} {'rel_l2':>9} {'ok':>3}")
    lines = [head, "-" * len(head)]
    for row in (r for section in ("prefill", "teacher_forcing", "generate") for r in result[section]):
        name = label(row)[:44]
        if row["status"] != "ok":
            lines.append(f"{name:<44} {row['status'].upper()}: {row.get('reason', '')}"[:160])
            continue
        s = row["served"]
        served = f"{s['served']}/{s['calls']}"
        unmasked = f"{s['unmasked']['served']}/{s['unmasked']['calls']}" if "unmasked" in s else "-"
        if row["kind"] == "teacher_forcing":
            lines.append(f"{name:<44} {'':>12} {'':>12} {'':>7} {'':>13} {'':>3} {'':>7} {served:>11} {unmasked:>11} "
                         f"{row['max_rel_l2']:>9.2e} {'yes' if row['passed'] else 'NO':>3}")
            continue
        t, ratio = row["tokens_per_s"], row.get("ratio")
        rel = row["logits"]["rel_l2"] if "logits" in row else None
        ok = "" if "logits" not in row else ("yes" if row["logits"]["passed"] else "NO")
        lines.append(f"{name:<44} {t['tuned']:>12.1f} {t['reference']:>12.1f} {row['speedup']:>7.3f} "
                     f"{_spread(ratio):>13} {_fmt(ratio and ratio['rounds'], 'd'):>3} {_verdict_text(row):>7} "
                     f"{served:>11} {unmasked:>11} {_fmt(rel, '.2e'):>9} {ok:>3}")
        if "control" in row:
            c = row["control"]
            what = f"  A/A control: {c['implementation']} vs itself"
            lines.append(f"{what:<44} {c['tokens_per_s']['a']:>12.1f} {c['tokens_per_s']['b']:>12.1f} "
                         f"{c['speedup']:>7.3f} {_spread(c['ratio']):>13} {c['ratio']['rounds']:>3} "
                         f"{_verdict_text(c):>7}")
    v = result.get("verdicts")
    if v:
        for kind in ("prefill", "generate", "control"):
            if v[kind]["measured"]:
                counts = ", ".join(f"{v[kind][k]} {k}" for k in gen.VERDICTS if v[kind][k])
                extra = (f"; A/A ratios {v[kind]['min_ratio']:.3f}-{v[kind]['max_ratio']:.3f}" if kind == "control"
                         else "")
                lines.append(f"{kind}: {counts}{extra}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.db is not None:  # before flashcore.autotune is imported: the op reads it on first lookup
        os.environ["AUTOTUNE_DB"] = str(args.db.expanduser().resolve())
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() or not args.tiny else "cpu")
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is imported: Triton's interpreter
    elif not torch.cuda.is_available():
        print("error: benchmarks/real_models.py needs a CUDA GPU (or --tiny for a CPU smoke run)", file=sys.stderr)
        return 2
    import transformers

    from flashcore.autotune import TOLERANCES
    from flashcore.autotune.core.profiles import cuda_device
    from flashcore.autotune.core.toolchain import provenance
    from flashcore.autotune.integrations import transformers as fct
    from flashcore.autotune.runtime.paths import resolve_db

    transformers.logging.set_verbosity_error()  # deprecation chatter (cache keyword names) on every step
    name = fct.register()
    allow_recompiles(torch)
    where = cuda_device() if device == "cuda" else ("cpu (Triton interpreter)", "-")
    db = resolve_db(None)
    max_len = max([s for _, s in args.shapes] + [p + n for _, p, n in args.gen_shapes] + [64])
    result = {"provenance": provenance(*where), "transformers": transformers.__version__, "device": device,
              "db": str(db), "db_exists": db.exists(), "implementation": name, "note": NOTE,
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "models": {m: {"description": gen.DESCRIPTION[m], "reference": gen.reference(m), "layers": args.layers,
                             "tiny": args.tiny} for m in args.models},
              "tolerance_rel_l2": {d: TOLERANCES[gen.DTYPES[d]].rel_l2 for d in args.dtypes},
              "verdict_rule": gen.VERDICT_RULE, "prefill": [], "teacher_forcing": [], "generate": [],
              "verdicts": {}, "skipped": [], "failures": []}
    print(f"{name!r} against transformers' own on {where[0]}; transformers {transformers.__version__}, torch "
          f"{torch.__version__}; cache {db} ({'exists' if db.exists() else 'absent: shipped tables or defaults'})",
          flush=True)

    def write() -> None:
        result["verdicts"] = verdicts(result)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    t_start = time.perf_counter()
    built: dict = {"key": None, "model": None, "error": None}
    for case in plan(args):
        key = (case["model"], case["dtype"])
        if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
            row = {**case, "status": "skipped", "reason": f"--budget-s {args.budget_s:g} s spent before it started"}
        else:
            if built["key"] != key:  # build each model and dtype once, free the last one first
                built.update(key=key, model=None, error=None)
                free(torch, device, compiled=True)
                config = gen.config_for(transformers, case["model"], args.layers, max_len, args.tiny)
                dtype = getattr(torch, gen.DTYPES[case["dtype"]])
                t0 = time.perf_counter()
                try:
                    built["model"] = gen.build(torch, transformers, config, dtype, device, gen.reference(case["model"]))
                except Exception as exc:  # recorded against each of its cases: the other models still run
                    built["error"] = "build: " + error_text(exc)
                print(f"{case['model']} {case['dtype']}: built in {time.perf_counter() - t0:.1f} s", flush=True)
            ctx = {"name": name, "reference": gen.reference(case["model"]), "device": device, "iters": args.iters,
                   "warmup": args.warmup, "gen_runs": args.gen_runs, "control": args.control,
                   "tf_steps": args.tf_steps,
                   "compile": not args.no_compile, "tolerance": TOLERANCES[gen.DTYPES[case["dtype"]]].rel_l2}
            row = {**case, "layers": args.layers, "reference": ctx["reference"]}
            t0 = time.perf_counter()
            if built["error"] is not None:
                row.update(status="failed", reason=built["error"])
            else:
                try:
                    row.update(run_case(torch, transformers, fct, ctx, built["model"], case), status="ok")
                except Exception as exc:  # recorded (OOM, kernel or transformers error): the next case still runs
                    row.update(status="failed", reason=error_text(exc))
                free(torch, device)
            row["case_s"] = round(time.perf_counter() - t0, 2)
        result[row["kind"]].append(row)
        if row["status"] == "skipped":
            result["skipped"].append(label(row))
        elif row["status"] == "failed":
            result["failures"].append(f"{label(row)}: {row['reason']}")
        write()
        print(f"  {label(row)}: {row['status']} ({row.get('case_s', 0)} s) {row.get('reason', '')}", flush=True)
    result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    write()
    print(f"\nwrote {args.out}\n{NOTE}\n{table(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
