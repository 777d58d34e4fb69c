"""`autotune sweep --devices 0,1,...`: one sweep worker process per device of this host, one shared cache.

Each worker is a plain ``python -m flashcore.autotune sweep`` with the same arguments (less ``--devices``) and
``CUDA_VISIBLE_DEVICES`` set to its device, so it keeps the sweep's trial isolation and resume. The workers
share the grid through the point claims of ``tuning.worker.PointClaim`` (lock files in ``<db>.claims/``): a
point is tuned by one of them and skipped by the others once it has a winner. The parent streams their output,
one line at a time, prefixed ``[gpu N]``. Each worker writes what it did at each point (``PointResult``: trials,
best, valid configs, invalid proposals, why its study stopped) to a file the parent names (``cli.reports``); the
parent prints the winners table once at the end from those reports, the same table a single-process sweep
prints, and fails if any worker did.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from ..core.errors import AutotuneError
from .reports import RESULTS_ENV, load_results



def parse_devices(value: str, *, device_count: int | None) -> list[int]:
    """``--devices 0,1,...`` as a list of distinct non-negative ints, each below ``device_count`` (if given)."""
    parts = [p.strip() for p in value.split(",")]
    if not value.strip() or any(not p.isdigit() for p in parts):
        raise AutotuneError(f"--devices {value!r}: expected comma-separated device indices, e.g. 0,1")
    devices = [int(p) for p in parts]
    if len(set(devices)) != len(devices):
        raise AutotuneError(f"--devices {value!r}: a device is listed twice")
    if device_count is not None:
        if len(devices) > device_count or max(devices) >= device_count:
            raise AutotuneError(f"--devices {value!r}: this host has {device_count} visible CUDA device(s) "
                                f"(indices 0..{device_count - 1})")
    return devices


def worker_args(*, gpu: str, grid: str | None, trials: int | None, db: Path, seed: int, dtype: str | None,
                retune: bool, kernels: tuple[str, ...] | None, rep_ms: int, from_misses: bool, patience: int | None,
                min_improvement: float, time_budget: float | None, storage: str | None,
                compile_workers: int | None = None) -> list[str]:
    """The ``autotune sweep`` arguments of one worker: the parent's, less ``--devices``, with the cache resolved."""
    args = ["--gpu", gpu, "--db", str(db), "--seed", str(seed), "--kernel", ",".join(kernels) if kernels else "auto",
            "--rep-ms", str(rep_ms), "--min-improvement", repr(min_improvement)]
    if dtype:
        args += ["--dtype", dtype]
    if grid:
        args += ["--grid", grid]
    if trials:
        args += ["--trials", str(trials)]
    if retune:
        args.append("--retune")
    if from_misses:
        args.append("--from-misses")
    if patience:
        args += ["--patience", str(patience)]
    if time_budget:
        args += ["--time-budget", repr(time_budget)]
    if storage:
        args += ["--storage", storage]
    if compile_workers is not None:
        args += ["--compile-workers", str(compile_workers)]
    return args


def _visible(device: int) -> str:
    """CUDA_VISIBLE_DEVICES for the worker of ``device``, an index into this process's visible devices."""
    inherited = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return inherited[device] if device < len(inherited) else str(device)


def run_multi(devices: str, **kw: Any) -> int:
    """Run one sweep worker per device of ``devices`` (see the module doc); returns the exit code (0 or 1).

    ``kw`` are :func:`cli.sweep.run_sweep`'s arguments. Bad arguments raise ``AutotuneError`` before any worker
    starts.
    """
    import torch

    from flashcore.cache import CacheStore

    from ..core.profiles import device_identity, resolve_profile
    from ..core.toolchain import make_key
    from ..runtime.paths import resolve_db
    from ..tuning.options import SweepOptions
    from ..tuning.storage import make_storage, redact
    from ..tuning.sweep import cached
    from .console import console as make_console
    from .sweep import CHILD_ENV, report_results, sweep_points

    profile = resolve_profile(kw["gpu"])
    count = None if profile.interpreter else torch.cuda.device_count()
    ids = parse_devices(devices, device_count=count)
    path = resolve_db(kw["db"]).resolve()
    points = sweep_points(path, profile, kw["kernels"], grid=kw["grid"], dtype=kw["dtype"],
                          from_misses=kw["from_misses"])
    if kw.get("storage"):
        make_storage(kw["storage"])  # fails early, and creates an RDB's tables before the workers race to
    gpu_name, cc = device_identity(profile)
    opts = SweepOptions(profile=profile, kernels=kw["kernels"])
    jobs = [(p, make_key(p, f, gpu_name, cc)) for p in points for f in opts.candidates(p)]
    with CacheStore.open(path, make_parents=kw["db"] is None) as store:  # created and migrated once, first
        cached_before = {k.id for p, k in jobs if cached(p, k, store) is not None}
    console = make_console(stderr=True)
    console.print(f"sweep --devices: {len(ids)} workers (gpu {', '.join(map(str, ids))}), {len(points)} points, "
                  f"cache {path}" + (f", studies in {redact(kw['storage'])}" if kw.get("storage") else ""),
                  highlight=False, markup=False)

    if kw.get("compile_workers") is None and not profile.interpreter:  # the host's cores, shared by the workers
        kw = {**kw, "compile_workers": max(1, (os.cpu_count() or 2) // len(ids) - 1)}
    args = worker_args(**{**kw, "db": path})
    procs: list[tuple[int, subprocess.Popen]] = []
    out_lock = threading.Lock()

    def pump(device: int, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with out_lock:
                sys.stderr.write(f"[gpu {device}] {line.rstrip()}\n")
                sys.stderr.flush()

    threads = []
    report_dir = tempfile.TemporaryDirectory(prefix="flashcore-sweep-")
    try:
        for d in ids:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": _visible(d), CHILD_ENV: "1", "PYTHONUNBUFFERED": "1",
                   RESULTS_ENV: str(Path(report_dir.name) / f"gpu{d}.json")}
            proc = subprocess.Popen([sys.executable, "-m", "flashcore.autotune", "sweep", *args], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    text=True, errors="replace")
            procs.append((d, proc))
            t = threading.Thread(target=pump, args=(d, proc), daemon=True)
            t.start()
            threads.append(t)
        codes = {d: proc.wait() for d, proc in procs}
    except BaseException:  # Ctrl-C or an error: stop the workers this call started, then re-raise
        for _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _, proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    finally:
        for t in threads:
            t.join(timeout=5)
        by_key: dict[str, list] = {}
        for d in ids:
            for res in load_results(Path(report_dir.name) / f"gpu{d}.json", jobs):
                by_key.setdefault(res.key.id, []).append(res)
        report_dir.cleanup()

    with CacheStore.open(path) as store:
        results = [_one_result(point, key, by_key.get(key.id, []), key.id in cached_before and not kw["retune"],
                               store) for point, key in jobs]
    from ..runtime.dispatch import clear_cache

    clear_cache()
    report_results(results, console)
    failed = {d: c for d, c in codes.items() if c != 0}
    if failed:
        console.print("error: sweep worker(s) failed: "
                      + ", ".join(f"gpu {d} (exit code {c})" for d, c in sorted(failed.items())),
                      highlight=False, markup=False)
        return 1
    return 0


def _one_result(point, key, reports: list, cached_before: bool, store):
    """The result of one (point, candidate) for the table: the report of the worker that tuned it (if several did,
    as with --retune, the fastest), else the cached winner it was skipped for."""
    from ..tuning.sweep import PointResult, cached

    if reports:
        best = min(reports, key=lambda r: (r.skipped, r.stopped == "time budget", r.best is None,
                                           r.best.median_us if r.best is not None else math.inf))
        if not best.skipped or cached_before:
            return best
    res = cached(point, key, store) or PointResult(point, key)
    res.skipped = cached_before
    if not cached_before:  # tuned in this run by a worker that failed before it could report
        res.trials = store.trials(key)
        res.error = "its sweep worker failed before reporting"
    return res
