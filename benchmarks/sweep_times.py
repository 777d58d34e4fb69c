"""Sweep wall times on the GPU, in one run: the `small` grid compiling serially and compiling ahead, then the
`default` grid compiling ahead. Each sweep starts from an empty cache file and an empty Triton cache.

    python3 benchmarks/sweep_times.py --out sweep-times.json --db default.db --logs DIR [--trials N] [--rep-ms MS]

Writes ``{"provenance", "small_serial_s", "small_parallel_s", "default_s", ...}`` (null where a sweep did not
finish in its time limit) and each sweep's log under --logs. The default grid's cache file is --db (keep it:
its winners are the ones to export).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]



def timed_sweep(grid: str, db: Path, log: Path, *, workers: int | None, trials: int | None, rep_ms: int,
                timeout_s: float, gpu: str = "h100", extra: tuple[str, ...] = (),
                env: dict[str, str] | None = None) -> tuple[float | None, list[str]]:
    """Run `autotune sweep --gpu GPU --grid GRID` with a fresh cache and Triton cache; (wall s or None, argv).
    ``workers`` None: the sweep's default number of compile processes; ``env``: extra environment variables."""
    for stale in db.parent.glob(db.name + "*"):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    argv = [sys.executable, "-m", "flashcore.autotune", "sweep", "--gpu", gpu, "--grid", grid, "--db", str(db),
            "--rep-ms", str(rep_ms)] + (["--compile-workers", str(workers)] if workers is not None else []) \
        + (["--trials", str(trials)] if trials else []) + list(extra)
    triton_cache = Path(tempfile.mkdtemp(prefix=f"triton-{grid}-{workers}-"))
    env = {**os.environ, **(env or {}), "TRITON_CACHE_DIR": str(triton_cache)}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        try:
            proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s)
            wall = time.perf_counter() - t0 if proc.returncode == 0 else None
        except subprocess.TimeoutExpired:
            fh.write(f"\n(sweep stopped by sweep_times.py after {timeout_s:g} s)\n")
            wall = None
    shutil.rmtree(triton_cache, ignore_errors=True)
    shown = ["autotune"] + argv[3:]
    return (round(wall, 1) if wall is not None else None), shown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--db", type=Path, required=True, help="cache file of the default grid's sweep")
    ap.add_argument("--logs", type=Path, required=True, help="folder for the sweeps' logs")
    ap.add_argument("--trials", type=int, default=None, help="--trials of every sweep (default: the sweep's)")
    ap.add_argument("--rep-ms", type=int, default=50)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="compile processes")
    ap.add_argument("--small-timeout", type=float, default=300.0)
    ap.add_argument("--default-timeout", type=float, default=600.0)
    ap.add_argument("--skip-small", action="store_true", help="only the default grid")
    args = ap.parse_args()

    import torch

    from flashcore.autotune.core.toolchain import provenance

    args.logs.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="sweep-times-"))
    common = dict(trials=args.trials, rep_ms=args.rep_ms)
    result = {"provenance": provenance(torch.cuda.get_device_name(), "%d.%d" % torch.cuda.get_device_capability()),
              "compile_workers": args.workers, "cpu_cores": os.cpu_count(), **common, "commands": {}}
    if not args.skip_small:
        for name, workers in (("small_serial", 0), ("small_parallel", args.workers)):
            wall, argv = timed_sweep("small", scratch / f"{name}.db", args.logs / f"sweep-{name}.log",
                                     workers=workers, timeout_s=args.small_timeout, **common)
            result[f"{name}_s"], result["commands"][name] = wall, " ".join(argv)
            print(f"{name}: {wall} s", flush=True)
        if result.get("small_serial_s") and result.get("small_parallel_s"):
            result["small_speedup"] = round(result["small_serial_s"] / result["small_parallel_s"], 2)
    wall, argv = timed_sweep("default", args.db, args.logs / "sweep-default.log", workers=args.workers,
                             timeout_s=args.default_timeout, **common)
    result["default_s"], result["commands"]["default"] = wall, " ".join(argv)
    print(f"default: {wall} s", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
