"""GPU smoke run of the Gluon kernel: ``python benchmarks/gluon_smoke.py [--quick] [--no-bench]``.

Every launch of a new config happens in a child process under a hard timeout (killed with its process group on
expiry), so a wrong barrier protocol shows up as "hang" instead of hanging this script. Stages:
1. one small shape (B1 H2 S200 D64, default config, non-causal): pass/fail with relative error; a failure
   stops the run unless --keep-going;
2. each variant (VARIANTS) over odd shapes (S never a multiple of a block, odd H, B 3, GQA 32/8 and 6/2,
   causal and not, fp16 and bf16, D 64/128/256): ok / wrong (rel err) / hang / error / skip per shape;
3. timing (CUDA-graph replay, median) of the configs in BENCH whose variants passed, at B8 H16 S4096 D128,
   causal and not, fp16 and bf16, next to cuDNN SDPA; TF/s = 4·B·H·S²·D (halved when causal) / time.
Ends with a compact table. Exit status 0 only if every check that ran passed.

Child modes (used by the stages above and by tests/test_gluon_gpu.py): ``--child JSON`` runs
{"config", "shapes": [[B, Hq, Hkv, S, D, causal, dtype], ...], "planted"} and prints one JSON line per shape;
``--bench JSON`` runs {"config" (null: cuDNN SDPA), "points": [...]} and prints one JSON line per point.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOLERANCES = {"float16": (2e-3, 1e-3), "bfloat16": (1.6e-2, 1.6e-2)}  # (atol, rtol), as the gate's
DEFAULT = tomllib.loads((HERE.parent / "kernels" / "attention_gluon" / "space.toml").read_text())["default"]
VARIANTS = {
    "default": {},
    "overlap": {"OVERLAP": True},
    "pingpong": {"PINGPONG": True},
    "pingpong+overlap": {"PINGPONG": True, "OVERLAP": True},
    "persistent": {"PERSISTENT": True},
    "persistent+pingpong+overlap": {"PERSISTENT": True, "PINGPONG": True, "OVERLAP": True},
    "one-consumer": {"CONSUMERS": 1},
    "one-consumer+overlap": {"CONSUMERS": 1, "OVERLAP": True},
    "stages-3": {"STAGES": 3},
    "m128-n64": {"BLOCK_M": 128},
    "m64-n128": {"BLOCK_N": 128},
    "m64-n128+pingpong+overlap": {"BLOCK_N": 128, "PINGPONG": True, "OVERLAP": True},
    "regs-232": {"CONSUMER_REGS": 232},
}
# (B, Hq, Hkv, S, D, causal, dtype)
SMALL = (1, 2, 2, 200, 64, False, "float16")
SHAPES = [
    (3, 5, 5, 77, 64, True, "float16"),
    (2, 32, 8, 300, 128, True, "bfloat16"),
    (1, 6, 2, 513, 128, False, "float16"),
    (1, 3, 3, 1, 64, True, "bfloat16"),
    (2, 4, 4, 1000, 64, False, "bfloat16"),
    (1, 3, 1, 701, 128, True, "float16"),
    (1, 2, 1, 333, 256, True, "bfloat16"),
]
QUICK_SHAPES = SHAPES[:4]
BENCH = ["default", "pingpong+overlap", "m64-n128", "m64-n128+pingpong+overlap", "persistent+pingpong+overlap",
         "one-consumer+overlap", "stages-3"]
BENCH_POINTS = [(8, 16, 16, 4096, 128, causal, dtype) for dtype in ("float16", "bfloat16") for causal in (False, True)]


def config_of(variant: str) -> dict:
    return {**DEFAULT, **VARIANTS[variant]}


def shape_id(shape) -> str:
    b, hq, hkv, s, d, causal, dtype = shape
    heads = f"H{hq}" if hq == hkv else f"H{hq}/{hkv}"
    return f"B{b}-{heads}-S{s}-D{d}-{'causal' if causal else 'full'}-{dtype}"


# --- child processes (these touch the GPU) ------------------------------------------------------------------

def make_inputs(shape, planted: bool, seed: int = 0, bshd: bool = False, guard: bool = False):
    """q (B, Hq, S, D), k and v (B, Hkv, S, D) on the GPU: N(0, 1), with a few query/key rows x8 and a value
    row x4 when ``planted`` (logits beyond exp's range without the running max; large outputs). ``bshd``:
    each is a (B, S, H, D) tensor seen through ``transpose(1, 2)`` (strided, still TMA-ready); ``guard``: each is
    followed by NaN rows past S in its head (``guarded``)."""
    import torch

    b, hq, hkv, s, d, _, dtype = shape
    gen = torch.Generator().manual_seed(seed + s * 7919 + d * 31 + hq)
    q = torch.randn((b, hq, s, d), generator=gen)
    k, v = (torch.randn((b, hkv, s, d), generator=gen) for _ in range(2))
    if planted:
        for t in sorted({0, s // 3, s - 1}):
            q[:, :, t] *= 8.0
        for t in sorted({s // 2, s - 1}):
            k[:, :, t] *= 8.0
        v[:, :, (s - 1) // 2] *= 4.0
    dt = getattr(torch, dtype)
    if bshd:
        return tuple(x.transpose(1, 2).to(device="cuda", dtype=dt).transpose(1, 2) for x in (q, k, v))
    if guard:
        return tuple(guarded(x.to(device="cuda", dtype=dt)) for x in (q, k, v))
    return tuple(x.to(device="cuda", dtype=dt) for x in (q, k, v))


GUARD_ROWS = 64


def guarded(x):
    """``x`` copied into the first S rows of a NaN-filled (B, H, S + GUARD_ROWS, D) buffer (a TMA-ready view):
    a kernel that reads past S gets NaNs, one that writes past S changes the guard rows."""
    import torch

    b, h, s, d = x.shape
    buf = torch.full((b, h, s + GUARD_ROWS, d), float("nan"), dtype=x.dtype, device=x.device)
    buf[:, :, :s] = x
    return buf[:, :, :s]


def poisoned_output(q, strided: bool, guard: bool = False):
    """NaN-filled output like q; ``strided``: a view whose head stride (D + 1 elements) no descriptor takes;
    ``guard``: followed by NaN guard rows past S in each head (``guarded``)."""
    import torch

    if guard:
        return guarded(torch.full_like(q, float("nan")))
    if not strided:
        return torch.full_like(q, float("nan"))
    b, h, s, d = q.shape
    return torch.full((b, s, h, d + 1), float("nan"), dtype=q.dtype, device=q.device)[..., :d].transpose(1, 2)


def reference(q, k, v, causal: bool, sm_scale=None):
    """fp32 truth; kv heads repeated for grouped-query attention."""
    from flashcore.kernels.reference import attention_reference

    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
    return attention_reference(q, k, v, causal=causal, sm_scale=sm_scale)


def verdict(out, ref, dtype: str) -> dict:
    """ok / wrong with the relative L2 error, max abs error and how many elements miss atol + rtol·|ref|."""
    import torch

    o = out.float()
    atol, rtol = TOLERANCES[dtype]
    bad = int((~torch.isfinite(o)).sum())
    diff = (o - ref).abs().nan_to_num(float("inf"))
    rel = float(torch.linalg.vector_norm((o - ref).nan_to_num(0.0)) / torch.linalg.vector_norm(ref).clamp_min(1e-30))
    outside = int((diff > atol + rtol * ref.abs()).sum())
    ok = bad == 0 and outside == 0
    return {"status": "ok" if ok else "wrong", "rel": rel, "max_abs": float(diff.max()), "nonfinite": bad,
            "outside": outside}


def fits(config: dict, shape) -> str | None:
    """Why the rules refuse ``config`` at ``shape`` on an H100/H200, or None."""
    from types import SimpleNamespace

    from flashcore.kernels.attention_gluon import rules

    b, hq, hkv, s, d, causal, dtype = shape
    point = SimpleNamespace(batch=b, heads=hq, kv_heads=hkv, seq_len=s, head_dim=d, causal=causal, dtype=dtype)
    profile = SimpleNamespace(smem_bytes=232448, sm_count=132, interpreter=False, compute_capability="9.0")
    for name in ("gluon_config_valid", "gluon_supported_point", "gluon_register_split", "gluon_register_budget",
                 "gluon_shared_memory_budget"):
        reason = getattr(rules, name)(config, point, profile)
        if reason:
            return f"{name}: {reason}"
    return None


def run_child(job: dict) -> None:
    import torch

    from flashcore.kernels import KernelError
    from flashcore.kernels.attention_gluon.launch import attention_gluon

    config, sm_scale, bshd, guard = job["config"], job.get("sm_scale"), job.get("bshd", False), job.get("guard", False)
    for shape in job["shapes"]:
        shape = tuple(shape)
        record = {"shape": list(shape)}
        reason = None if job.get("ignore_rules") else fits(config, shape)
        if reason:
            print(json.dumps({**record, "status": "skip", "reason": reason}), flush=True)
            continue
        q, k, v = make_inputs(shape, job.get("planted", True), bshd=bshd, guard=guard)
        causal = shape[5]
        out = poisoned_output(q, strided=bshd, guard=guard)
        try:
            attention_gluon(q, k, v, config, causal=causal, out=out, sm_scale=sm_scale)
            torch.cuda.synchronize()  # a hang stops here; the parent's timeout kills us
        except KernelError as exc:
            print(json.dumps({**record, "status": "error", "reason": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        ref = reference(q, k, v, causal, sm_scale)
        result = verdict(out, ref, shape[6])
        if guard:  # the GUARD_ROWS rows after S of each head (the same storage, past the view) must still be NaN
            b, h, s, d = out.shape
            rows = out.as_strided((b, h, GUARD_ROWS, d), out.stride(), out.storage_offset() + s * out.stride(2))
            if not bool(torch.isnan(rows).all()):
                result = {**result, "status": "wrong", "reason": "wrote rows past S"}
        print(json.dumps({**record, **result}), flush=True)


def run_bench(job: dict) -> None:
    import torch
    import triton

    from flashcore.kernels.attention_gluon.launch import attention_gluon

    config = job["config"]
    for point in job["points"]:
        b, hq, hkv, s, d, causal, dtype = point
        q, k, v = make_inputs(point, planted=False)
        out = torch.empty_like(q)
        if config is None:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def fn():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                            enable_gqa=hq != hkv)
            result = fn()
        else:
            def fn():
                return attention_gluon(q, k, v, config, causal=causal, out=out)
            result = fn()
        torch.cuda.synchronize()
        check = verdict(result, reference(q, k, v, causal), dtype)["status"]
        try:
            ms = triton.testing.do_bench_cudagraph(fn, return_mode="median")
            how = "graph"
        except RuntimeError:
            ms = triton.testing.do_bench(fn, return_mode="median")
            how = "stream"
        flops = 4.0 * b * hq * s * s * d / (2 if causal else 1)
        print(json.dumps({"point": list(point), "ms": ms, "tflops": flops / ms * 1e-9, "check": check,
                          "timing": how}), flush=True)


# --- parent: subprocesses under timeouts --------------------------------------------------------------------

def spawn(mode: str, job: dict, timeout: float) -> tuple[list[dict], str]:
    """Run a child; returns (its JSON lines, "" | "hang" | "crash: ..."). Kills the whole process group on
    timeout, so a kernel spinning on an mbarrier is torn down with its CUDA context."""
    cmd = [sys.executable, str(Path(__file__).resolve()), mode, json.dumps(job)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=os.environ.copy())
    try:
        out, err = proc.communicate(timeout=timeout)
        problem = "" if proc.returncode == 0 else f"crash: {_last_line(err)}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        problem = "hang"
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return lines, problem


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


def check_variant(variant: str, shapes, timeout: float) -> list[dict]:
    """Per-shape results of one variant; the shape running when the child hung or crashed is marked so, and
    the ones after it "not run"."""
    lines, problem = spawn("--child", {"config": config_of(variant), "shapes": shapes, "planted": True}, timeout)
    done = {tuple(r["shape"]): r for r in lines}
    results, failed = [], False
    for shape in shapes:
        if tuple(shape) in done:
            results.append(done[tuple(shape)])
        else:
            results.append({"shape": list(shape), "status": "not run" if failed else (problem or "missing")})
            failed = True
    return results


def describe(r: dict) -> str:
    if r["status"] == "wrong":
        why = f" ({r['reason']})" if r.get("reason") else ""
        return f"WRONG rel={r['rel']:.2e} max={r['max_abs']:.2e} outside={r['outside']} nonfinite={r['nonfinite']}{why}"
    if r["status"] == "ok":
        return f"ok rel={r['rel']:.2e}"
    head, _, rest = r["status"].partition(":")
    return head.upper() + (f":{rest}" if rest else "") + (f" ({r['reason']})" if r.get("reason") else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="GPU smoke run of the Gluon attention kernel")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and variants, no bf16 bench")
    parser.add_argument("--no-bench", action="store_true")
    parser.add_argument("--keep-going", action="store_true", help="go on after the first small check fails")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the first check")
    parser.add_argument("--variants", default="", help="comma-separated subset of VARIANTS")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--bench", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.child:
        run_child(json.loads(ns.child))
        return 0
    if ns.bench:
        run_bench(json.loads(ns.bench))
        return 0

    table, all_ok = [], True
    print(f"[1] default config {DEFAULT} at {shape_id(SMALL)} (timeout {ns.timeout:.0f}s)", flush=True)
    first = check_variant("default", [SMALL], ns.timeout)[0]
    print(f"    {describe(first)}", flush=True)
    table.append(("default", shape_id(SMALL), describe(first)))
    if first["status"] != "ok":
        all_ok = False
        if not ns.keep_going:
            print("first check failed: stopping (use --keep-going to run the rest)")
            return 1

    variants = [v for v in (ns.variants.split(",") if ns.variants else VARIANTS) if v]
    if ns.quick and not ns.variants:
        variants = ["default", "overlap", "pingpong", "pingpong+overlap", "persistent", "one-consumer"]
    shapes = QUICK_SHAPES if ns.quick else SHAPES
    passed = set()
    print(f"[2] {len(variants)} variants x {len(shapes)} shapes", flush=True)
    for variant in variants:
        results = check_variant(variant, [list(s) for s in shapes], timeout=60.0 + 20.0 * len(shapes))
        good = all(r["status"] in ("ok", "skip") for r in results)
        all_ok &= good
        if good:
            passed.add(variant)
        print(f"  {variant:30s} {config_of(variant)}", flush=True)
        for shape, r in zip(shapes, results):
            print(f"    {shape_id(shape):34s} {describe(r)}", flush=True)
            table.append((variant, shape_id(shape), describe(r)))

    if not ns.no_bench:
        points = BENCH_POINTS[:2] if ns.quick else BENCH_POINTS
        print("[3] timing (CUDA graph replay, median)", flush=True)
        rows = {"cudnn-sdpa": spawn("--bench", {"config": None, "points": points}, 300.0)}
        for variant in (v for v in BENCH if v in passed and not any(fits(config_of(v), p) for p in points)):
            rows[variant] = spawn("--bench", {"config": config_of(variant), "points": points}, 300.0)
        header = "  ".join(f"{'causal' if p[5] else 'full'}-{p[6][:4]:>4}" for p in points)
        print(f"  {'config':30s} {header}   (TF/s at B8 H16 S4096 D128)")
        for name, (lines, problem) in rows.items():
            cells = {tuple(r["point"]): r for r in lines}
            text = "  ".join(f"{cells[tuple(p)]['tflops']:7.1f}{'' if cells[tuple(p)]['check'] == 'ok' else '!'}"
                             if tuple(p) in cells else f"{'-':>7}" for p in points)
            print(f"  {name:30s} {text}   {problem}", flush=True)
            table.append((name, "bench", text + (f" {problem}" if problem else "")))

    print("\nsummary")
    for variant, where, what in table:
        print(f"  {variant:30s} {where:34s} {what}")
    print("ALL OK" if all_ok else "SOME CHECKS FAILED ('!' after a TF/s: that output was wrong)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
