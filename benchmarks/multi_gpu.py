"""`autotune sweep --devices 0,1` against one GPU, in one run on a host with two GPUs: the `default` grid swept
on GPU 0 alone, then on both, each from an empty cache and an empty Triton cache; then the winners compared.

    python3 benchmarks/multi_gpu.py --gpu h200 --out multi-gpu.json --logs DIR [--devices 0,1] [--rep-ms MS]

Writes ``{"provenance", "one_gpu_s", "devices_s", "speedup", "points", "same_config", "median_ratio": {...}}``:
per point, whether both sweeps chose the same config and the ratio of their winners' medians (timing noise and
near-ties show up there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


from sweep_times import timed_sweep  # noqa: E402


def winners(db: Path) -> dict[str, dict]:
    from flashcore.cache import CacheStore

    def label(k) -> str:
        return f"B{k.batch}-H{k.heads}-S{k.seq_len}-D{k.head_dim}-{'causal' if k.causal else 'full'}"

    with CacheStore.open(db) as store:
        return {label(e.key): {"config": e.config, "median_us": e.median_us} for e in store.winners()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", default="h200", help="profile of the sweeps")
    ap.add_argument("--grid", default="default")
    ap.add_argument("--devices", default="0,1")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--logs", type=Path, required=True)
    ap.add_argument("--rep-ms", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=280.0, help="seconds per sweep")
    args = ap.parse_args()

    import torch

    from flashcore.autotune.core.toolchain import provenance

    args.logs.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="multi-gpu-"))
    one_db, two_db = scratch / "one.db", scratch / "devices.db"
    n = len(args.devices.split(","))
    env_one = {"CUDA_VISIBLE_DEVICES": args.devices.split(",")[0]}
    one_s, one_argv = timed_sweep(args.grid, one_db, args.logs / "sweep-one-gpu.log", workers=None, trials=None,
                                  rep_ms=args.rep_ms, timeout_s=args.timeout, gpu=args.gpu, env=env_one)
    print(f"one GPU: {one_s} s", flush=True)
    two_s, two_argv = timed_sweep(args.grid, two_db, args.logs / "sweep-devices.log", workers=None, trials=None,
                                  rep_ms=args.rep_ms, timeout_s=args.timeout, gpu=args.gpu,
                                  extra=("--devices", args.devices))
    print(f"--devices {args.devices}: {two_s} s", flush=True)
    a, b = winners(one_db), winners(two_db)
    common = sorted(set(a) & set(b))
    ratios = {p: round(b[p]["median_us"] / a[p]["median_us"], 3) for p in common}
    result = {
        "provenance": provenance(torch.cuda.get_device_name(0), "%d.%d" % torch.cuda.get_device_capability(0)),
        "gpus": torch.cuda.device_count(), "cpu_cores": os.cpu_count(), "grid": args.grid, "rep_ms": args.rep_ms,
        "commands": {"one_gpu": f"CUDA_VISIBLE_DEVICES={env_one['CUDA_VISIBLE_DEVICES']} " + " ".join(one_argv),
                     "devices": " ".join(two_argv)},
        "one_gpu_s": one_s, "devices_s": two_s, "devices": n,
        "speedup": round(one_s / two_s, 2) if one_s and two_s else None,
        "points": len(common), "points_one_gpu": len(a), "points_devices": len(b),
        "same_config": sum(a[p]["config"] == b[p]["config"] for p in common),
        "median_ratio": {"per_point": ratios,
                         "geomean": round(statistics.geometric_mean(ratios.values()), 3) if ratios else None,
                         "min": min(ratios.values(), default=None), "max": max(ratios.values(), default=None)},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "median_ratio"}, indent=2))
    print("median ratio devices/one:", {k: v for k, v in result["median_ratio"].items() if k != "per_point"})


if __name__ == "__main__":
    main()
