"""Run-time overheads of the drop-in op, measured on the GPU: `python3 benchmarks/overhead.py --out FILE`.

- get_kernel on a hit: mean over 100k calls (Python, after the first call).
- Host time per call of autotune.attention and of SDPA for a small point (B 8, H 8, S 128, D 64, fp16): the
  time for the call to return on the host, averaged over many calls with the GPU otherwise idle, in eager mode
  and as one CUDA graph replay.
- Where that time goes (host_us): "attention_op" (through the custom op's dispatch, as under torch.compile),
  "kernel_call" (the served TunedKernel alone: the fast launcher of kernels/attention_fwd/fastlaunch.py) and "launcher"
  (kernels.launch.attention_fwd, the normal launcher, with the same config); "fast_launch" counts the fast
  launcher's hits, misses and fallbacks over the run.
Writes JSON with provenance (GPU, torch, triton, commit, date).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path



import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from flashcore import autotune  # noqa: E402
from flashcore.autotune.core.toolchain import provenance  # noqa: E402
from flashcore.kernels.attention_fwd.launch import attention_fwd  # noqa: E402


def host_us(fn, calls: int = 2000, rounds: int = 5) -> float:
    """Median over rounds of the mean host time per call (µs); syncs between rounds, not inside them."""
    fn()
    torch.cuda.synchronize()
    means = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        means.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(means)


def graphed(fn):
    """fn captured in a CUDA graph; returns the replay callable."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="JSON file to write")
    ap.add_argument("--db", type=Path, help="cache file get_kernel reads")
    args = ap.parse_args()
    shape = (8, 8, 128, 64)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.float16) for _ in range(3))

    if args.db:  # autotune.attention reads the default cache file: make it this one
        os.environ["AUTOTUNE_DB"] = str(args.db)
    kernel = autotune.get_kernel(shape, dtype=torch.float16, causal=False)  # the one autotune.attention uses
    n = 100_000
    t0 = time.perf_counter()
    for _ in range(n):
        autotune.get_kernel(shape, dtype=torch.float16, causal=False)
    lookup_us = (time.perf_counter() - t0) / n * 1e6

    ours = lambda: autotune.attention(q, k, v)  # noqa: E731
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    torch.testing.assert_close(ours(), sdpa(), atol=2e-3, rtol=1e-3)
    op = lambda: torch.ops.flashcore.attention(q, k, v, False, None)  # noqa: E731
    call = lambda: kernel(q, k, v)  # noqa: E731
    normal = lambda: attention_fwd(q, k, v, kernel.config, causal=False)  # noqa: E731
    assert torch.equal(ours(), normal()), "autotune.attention differs from the normal launcher"
    result = {
        "provenance": provenance(torch.cuda.get_device_name(), "%d.%d" % torch.cuda.get_device_capability()),
        "shape": list(shape), "dtype": "float16", "served_by": kernel.source, "config": kernel.config,
        "get_kernel_hit_us": round(lookup_us, 3),
        "host_us": {"attention": round(host_us(ours), 2), "sdpa": round(host_us(sdpa), 2),
                    "attention_graph": round(host_us(graphed(ours)), 2),
                    "sdpa_graph": round(host_us(graphed(sdpa)), 2),
                    "attention_op": round(host_us(op), 2), "kernel_call": round(host_us(call), 2),
                    "launcher": round(host_us(normal), 2)},
    }
    launcher = kernel._launch
    result["fast_launch"] = {name: getattr(launcher, name, None) for name in ("hits", "misses", "fallbacks")}
    h = result["host_us"]
    result["ratio_eager"] = round(h["attention"] / h["sdpa"], 3)
    result["ratio_graph"] = round(h["attention_graph"] / h["sdpa_graph"], 3)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
