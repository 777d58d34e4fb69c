#!/usr/bin/env python3
"""Probe the attention kernel's variants on a CUDA GPU: a handful of configs of each, timed and gated.

    python3 benchmarks/probe_kernel.py               # timing table, < 3 minutes on an H100
    python3 benchmarks/probe_kernel.py --calibrate   # compiler's registers / spills / shared memory per config
                                                     # next to the search space's resource rules

The timing table has one row per (point, variant, config): median µs of ``triton.testing.do_bench``, TF/s
(4·B·H·S²·D, halved when causal), the correctness gate against the fp32 reference (``autotune.check``), the
compiler's registers / spilled bytes / shared memory, and the search space's verdict on the config ("ok", or
the rules that would prune it; probed anyway). Every config is compiled first in parallel worker processes
(Triton's disk cache then serves the main process); a config that fails to compile or launch prints its typed
error and the probe goes on. Configs that the structural rules exclude (REVERSE without causal,
WARP_SPECIALIZE without 8 warps) are not run; resource and usefulness rules are only reported.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# (B, H, S, D, causal)
POINTS = [(4, 16, 8192, 128, False), (4, 16, 8192, 128, True), (4, 16, 8192, 64, False),
          (32, 8, 512, 64, False), (8, 8, 128, 64, False)]
# (BLOCK_M, BLOCK_N, num_warps, num_stages)
TILES = [(64, 64, 4, 3), (128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (128, 64, 4, 2), (64, 128, 4, 2),
         (256, 64, 8, 2)]
VARIANTS = {
    "pointer": {},
    "device_tma": {"LOADS": "device_tma"},
    "host_tma": {"LOADS": "host_tma"},
    "ws": {"WARP_SPECIALIZE": True},
    "ws+host_tma": {"WARP_SPECIALIZE": True, "LOADS": "host_tma"},
    "reverse": {"REVERSE": True},
    "heads_first": {"HEADS_FIRST": True},
    "persistent+host_tma": {"PERSISTENT": True, "LOADS": "host_tma"},
}
STRUCTURAL = ("reverse_needs_causal", "warp_specialize_needs_8_warps", "causal_split_needs_causal")
CALIBRATE_TILES = [(bm, bn, w, s) for bm in (64, 128, 256) for bn in (32, 64, 128) for w in (4, 8)
                   for s in (2, 3, 4)]
DEADLINE_S = 165.0


def make_config(tile, variant, causal):
    bm, bn, w, s = tile
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s, "CAUSAL_SPLIT": bool(causal),
            **VARIANTS[variant]}


def _inputs(shape):
    import torch

    b, h, s, d, _ = shape
    return tuple(torch.empty((b, h, s, d), dtype=torch.float16, device="cuda").normal_() for _ in range(3))


def _compile_job(shape, variant, config):
    """Worker: compile the config at the point's shapes (filling Triton's disk cache) and report resources."""
    from flashcore.kernels import KernelError
    from flashcore.kernels.attention_fwd.launch import compile_info

    try:
        q, k, v = _inputs(shape)
        return compile_info(q, k, v, config, causal=shape[4]), None
    except KernelError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a probe reports everything and goes on
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:300]


def _pool(jobs):
    """Run ``_compile_job`` over ``jobs`` in parallel processes: [(info, error)] in the order of ``jobs``."""
    workers = max(1, min(16, (os.cpu_count() or 2) - 1, len(jobs)))
    results = [(None, "not compiled")] * len(jobs)
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        futures = {ex.submit(_compile_job, *job): i for i, job in enumerate(jobs)}
        for fut in cf.as_completed(futures):
            try:
                results[futures[fut]] = fut.result()
            except Exception as exc:  # noqa: BLE001 - a crashed worker is one failed job
                results[futures[fut]] = (None, f"worker died: {type(exc).__name__}: {exc}")
    return results


def _freeze(config):
    return tuple(sorted(config.items()))


def _broken_rules(config, shape):
    from flashcore.autotune import PROFILES, Point
    from flashcore.kernels import load_space

    point = Point(*shape)
    return [v.split(":")[0] for v in load_space("attention_fwd").violations(config, point, PROFILES["h100"])]


def _rules_verdict(config, shape):
    broken = _broken_rules(config, shape)
    return "ok" if not broken else ",".join(broken)


def _fmt_cfg(config):
    from flashcore.autotune.core.problem import format_config

    return format_config({k: v for k, v in config.items() if k != "CAUSAL_SPLIT"})


def probe(args):
    import torch
    import triton.testing

    from flashcore.autotune import Point, check
    from flashcore.kernels import KernelError
    from flashcore.kernels.attention_fwd.launch import attention_fwd
    from flashcore.kernels.reference import attention_reference

    t0 = time.perf_counter()
    plan = [(shape, variant, make_config(tile, variant, shape[4]))
            for shape in POINTS for variant in VARIANTS for tile in TILES]
    plan = [p for p in plan if not set(_broken_rules(p[2], p[0])) & set(STRUCTURAL)]
    jobs = sorted({(shape, variant, _freeze(cfg)) for shape, variant, cfg in plan})
    results = _pool([(shape, variant, dict(cfg)) for shape, variant, cfg in jobs])
    compiled = dict(zip(jobs, results))
    print(f"# compiled {len(jobs)} kernels in {time.perf_counter() - t0:.0f}s "
          f"({sum(1 for r in compiled.values() if r[1]) } failed)", flush=True)

    header = f"{'point':<24} {'variant':<15} {'config':<34} {'µs':>9} {'TF/s':>6} {'gate':<5} " \
             f"{'regs':>4} {'spill':>5} {'smemKB':>6}  rules / error"
    print(header)
    print("-" * len(header))
    best = {}
    for shape in POINTS:
        point = Point(*shape)
        q, k, v = _inputs(shape)
        ref = attention_reference(q, k, v, causal=point.causal)
        label = f"{shape[0]},{shape[1]},{shape[2]},{shape[3]},{'causal' if shape[4] else 'full'}"
        for _, variant, config in [p for p in plan if p[0] == shape]:
            info, err = compiled.get((shape, variant, _freeze(config)), (None, "not compiled"))
            res = f"{info['regs']:>4} {info['spills']:>5} {info['shared'] / 1024:>6.0f}" if info else f"{'':>4} {'':>5} {'':>6}"
            rules = _rules_verdict(config, shape)
            head = f"{label:<24} {variant:<15} {_fmt_cfg(config):<34}"
            if time.perf_counter() - t0 > args.deadline:
                print(f"{head} {'':>9} {'':>6} {'skip':<5} {res}  out of time", flush=True)
                continue
            if err:
                print(f"{head} {'':>9} {'':>6} {'FAIL':<5} {res}  {err}", flush=True)
                continue
            try:
                out = torch.full_like(q, float("nan"))
                attention_fwd(q, k, v, config, causal=point.causal, out=out)
                torch.cuda.synchronize()
                verdict = check(out, ref, "float16")
                fn = lambda: attention_fwd(q, k, v, config, causal=point.causal, out=out)  # noqa: E731
                us = triton.testing.do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms) * 1e3
            except KernelError as exc:
                print(f"{head} {'':>9} {'':>6} {'FAIL':<5} {res}  {type(exc).__name__}: {exc}", flush=True)
                continue
            except Exception as exc:  # noqa: BLE001
                print(f"{head} {'':>9} {'':>6} {'FAIL':<5} {res}  {type(exc).__name__}: {exc}"[:400], flush=True)
                continue
            tf = point.flops / (us * 1e-6) / 1e12
            gate = "pass" if verdict.passed else "WRONG"
            note = rules if verdict.passed else f"{rules}; {verdict.reason}"
            print(f"{head} {us:>9.1f} {tf:>6.0f} {gate:<5} {res}  {note}", flush=True)
            if verdict.passed:
                key = (label, variant)
                if key not in best or us < best[key][0]:
                    best[key] = (us, tf, _fmt_cfg(config))
        del q, k, v, ref
        torch.cuda.empty_cache()

    print("\n# best passing config per point and variant")
    for (label, variant), (us, tf, cfg) in best.items():
        print(f"{label:<24} {variant:<15} {us:>9.1f} µs {tf:>6.0f} TF/s  {cfg}")
    print(f"# total {time.perf_counter() - t0:.0f}s")


def calibrate(args):
    from flashcore.autotune import PROFILES, Point
    from flashcore.search_spaces.rules import (REGISTER_LIMIT, register_budget, registers_per_thread, shared_bytes,
                                     shared_memory_budget)

    h100 = PROFILES["h100"]
    t0 = time.perf_counter()
    jobs = []
    for d in (64, 128):
        shape = (1, 16, 1024, d, True)
        for tile in CALIBRATE_TILES:
            for variant in args.variants.split(","):
                config = make_config(tile, variant, True)
                if not set(_broken_rules(config, shape)) & set(STRUCTURAL):
                    jobs.append((shape, variant, config))
    results = _pool(jobs)
    print(f"# compiled {len(jobs)} kernels in {time.perf_counter() - t0:.0f}s; shared limit "
          f"{h100.smem_bytes} B, register limit {REGISTER_LIMIT}")
    print(f"{'D':>3} {'variant':<12} {'BM':>3} {'BN':>3} {'w':>1} {'s':>1} | {'regs':>4} {'spill':>5} {'est':>4} "
          f"{'reg rule':<8} | {'shared':>6} {'est':>6} {'smem rule':<9} | error")
    wrong = 0
    for (shape, variant, config), (info, err) in zip(jobs, results):
        point = Point(*shape)
        est_r = registers_per_thread(config, point)
        est_s = shared_bytes(config, point)
        r_ok = register_budget(config, point, h100) is None
        s_ok = shared_memory_budget(config, point, h100) is None
        bm, bn, w, s = (config[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"))
        line = f"{shape[3]:>3} {variant:<12} {bm:>3} {bn:>3} {w:>1} {s:>1} | "
        if info:
            # register_budget's contract: accept every config that does not spill, reject every one that
            # spills more than 32 bytes (a few spilled bytes may go either way)
            r_mark = "ok"
            if r_ok and info["spills"] > 32:
                r_mark = "TOO-LAX"
            elif not r_ok and info["spills"] == 0:
                r_mark = "too-strict"
            fits = info["shared"] <= h100.smem_bytes
            s_mark = "ok" if s_ok == fits else ("TOO-LAX" if s_ok else "too-strict")
            wrong += r_mark != "ok" or s_mark != "ok"
            line += f"{info['regs']:>4} {info['spills']:>5} {est_r:>4.0f} {r_mark:<8} | {info['shared']:>6} {est_s:>6} {s_mark:<9} |"
        else:
            line += f"{'':>4} {'':>5} {est_r:>4.0f} {'':<8} | {'':>6} {est_s:>6} {'':<9} | {err}"
        print(line, flush=True)
    print(f"# {wrong} configs where a rule disagrees with the compiler; total {time.perf_counter() - t0:.0f}s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibrate", action="store_true", help="print compiler resources against the rules")
    parser.add_argument("--variants", default="pointer,device_tma,host_tma,ws",
                        help="--calibrate: comma-separated variants to compile (see VARIANTS)")
    parser.add_argument("--warmup-ms", type=int, default=10)
    parser.add_argument("--rep-ms", type=int, default=40)
    parser.add_argument("--deadline", type=float, default=DEADLINE_S, help="stop timing after this many seconds")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("probe_kernel.py needs a CUDA GPU", file=sys.stderr)
        return 2
    os.environ.pop("TRITON_INTERPRET", None)
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__} triton "
          f"{__import__('triton').__version__}", flush=True)
    (calibrate if args.calibrate else probe)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
