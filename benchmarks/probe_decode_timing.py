#!/usr/bin/env python3
"""Why the sweep and the bench disagree at large decode points: the same candidates timed three ways.

At B64 KV16384 decode points the shipped tables (sweep trials, each in a worker process) put cuDNN at ~1085 µs
and attention_kv at ~965 µs, while ``autotune bench`` (one process, back to back) measures cuDNN at ~945 µs and
attention_kv at ~1087 µs, three runs running. For each point this probe times cuDNN and the table's attention_kv
config (1) in this process through the sweep's own trial code (``tuning.trial.prepare`` / ``run_trial``), (2) in
a sweep worker process (``TrialWorker``, as ``autotune sweep`` does), (3) in this process again, in the other
order, and writes every figure as JSON with provenance::

    python3 benchmarks/probe_decode_timing.py --out probe.json
"""

from __future__ import annotations

import argparse
import json

POINTS = ((64, 32, 8, 16384, 128), (64, 28, 4, 16384, 128), (8, 32, 8, 8192, 128))  # (B, Hq, Hkv, S, D)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rep-ms", type=int, default=20)
    args = parser.parse_args()

    import torch

    from flashcore.autotune import get_kernel
    from flashcore.autotune.core.problem import Point
    from flashcore.autotune.core.profiles import PROFILES
    from flashcore.autotune.core.toolchain import provenance
    from flashcore.autotune.tuning.trial import prepare, run_trial
    from flashcore.autotune.tuning.worker import TrialWorker
    from flashcore.kernels import get_family

    profile = PROFILES["h200"]
    rows = []
    for b, hq, hkv, s, d in POINTS:
        point = Point(b, hq, 1, d, False, "float16", hkv, s)
        own = get_kernel((b, hq, 1, d), torch.float16, False, kernel="attention_kv", kv_heads=hkv, kv_len=s)
        cands = (("sdpa_cudnn", {}), ("attention_kv", dict(own.config)))
        row = {"point": point.label, "own_config": dict(own.config), "own_source": own.source}
        for rnd, order in (("in_process", cands), ("in_process_reversed", cands[::-1])):
            ctx = None
            for name, config in order:
                family = get_family(name)
                ctx = prepare(point, family, profile, None, base=ctx)
                out = run_trial(ctx, config, rep_ms=args.rep_ms, rules=False)
                row[f"{rnd}_{name}_us"] = out.median_us
            del ctx
            torch.cuda.empty_cache()
        for name, config in cands:
            with TrialWorker(get_family(name), profile, rep_ms=args.rep_ms) as worker:
                out = worker.bind(point).run(config, rules=False)
            row[f"worker_{name}_us"] = out.median_us
            row[f"worker_{name}_status"] = out.status
        print(json.dumps(row), flush=True)
        rows.append(row)
    prov = provenance(torch.cuda.get_device_name(), "%d.%d" % torch.cuda.get_device_capability())
    with open(args.out, "w") as f:
        json.dump({"provenance": prov, "rep_ms": args.rep_ms, "rows": rows, "complete": True}, f, indent=1)


if __name__ == "__main__":
    main()
