"""`autotune bench`: our own best kernel and the candidate get_kernel serves, against PyTorch's SDPA backends, on
the same inputs, in one process.

Library part only: no typer, no printing. For every point: ``own`` is the fastest of our kernels that the cache
(or a shipped table) holds there (``get_kernel(kernel="own")``), ``served`` what ``get_kernel`` serves (ours or a
backend: the fastest correct candidate of the sweep), and each SDPA backend forced alone (flash, cudnn,
efficient). Each is checked against the fp32 reference, then timed. The two are reported apart so that the
speed of our own kernels is never credited with a backend's. A provider that refuses a point, or whose output
is not finite, is recorded as null with its reason in the point's ``errors``; nothing aborts the bench.
"""

from __future__ import annotations

import math
import re
import statistics
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from flashcore.kernels import KernelError, get_family
from flashcore.kernels.reference import attention_reference

from ..core.errors import AutotuneError
from ..core.numbers import geomean
from ..core.problem import Point, torch_dtype
from ..core.profiles import GpuProfile, device_identity
from ..core.toolchain import provenance
from ..runtime.dispatch import OWN, TunedKernel, get_kernel
from ..tuning import gate as _gate
from ..tuning.inputs import make_inputs
from ..tuning.timing import measure

SDPA_BACKENDS = ("flash", "cudnn", "efficient")
PROVIDERS = ("own", "served", *SDPA_BACKENDS)
FIGURES = ("us", "p95_us", "tflops", "rel_err")
CPU_TIMING = "cpu-wall (meaningless for speed)"
CUDA_TIMING = "cuda-graph-events"  # CUDA events around graph replays, L2 flushed before each (tuning/timing.py)
NOT_ON_CPU = "not available on cpu"
ROUNDS = 3  # turns each provider is timed in on a GPU (``_time_in_turns``); one on the CPU

Row = dict[str, Any]
_TRIGGERED = re.compile(r"\s*\(Triggered internally at [^)]*\)\.?")


def bench_point(point: Point, *, profile: GpuProfile, db: str | Path | None = None, rep_ms: int = 100,
                seed: int = 0, gpu_name: str | None = None, kernel: str | None = None) -> Row:
    """Bench one point: our own best kernel, the served candidate and the three SDPA backends, on the same seeded
    inputs.

    Returns a flat dict: the point's fields; ``own_kernel``, ``own_config``, ``own_source`` and the same for
    ``served``; for each provider ``p`` the figures ``p_us`` (median), ``p_p95_us``, ``p_tflops`` and ``p_rel_err``
    (relative L2 error against fp32; all null where the provider refused or failed); the ratios
    ``best_sdpa_over_own``, ``best_sdpa_over_served``, ``cudnn_over_own`` and ``flash_over_own`` (> 1: ours is
    faster); and ``errors`` mapping a provider to why it has no figures. ``kernel`` restricts "own" (and then
    "served") to one family.
    """
    cuda = not profile.interpreter
    if gpu_name is None:
        gpu_name = device_identity(profile)[0]
    lookup = dict(dtype=torch_dtype(point.dtype), causal=point.causal, gpu=gpu_name, db=db,
                  kv_heads=point.kv_heads, kv_len=point.kv_len, lower_right=point.lower_right)
    shape = (point.batch, point.heads, point.seq_len, point.head_dim)
    own = get_kernel(shape, kernel=kernel or OWN, **lookup)
    served = own if kernel else get_kernel(shape, **lookup)
    row: Row = {**point.as_dict(), "label": point.label}
    for name, tk in (("own", own), ("served", served)):
        row.update({f"{name}_kernel": tk.kernel, f"{name}_config": dict(tk.config), f"{name}_source": tk.source})
    for p in PROVIDERS:
        row.update({f"{p}_{f}": None for f in FIGURES})
    errors: dict[str, str] = {}
    q, k, v = make_inputs(point, "cuda" if cuda else "cpu", seed)
    ref = attention_reference(q, k, v, causal=point.causal, lower_right=point.lower_right)
    timed: list[tuple[str, Callable[[], Any]]] = []  # checked providers, timed in turns below
    _bench_candidate(row, errors, "own", own, point, q, k, v, ref, cuda=cuda, rep_ms=rep_ms, timed=timed)
    for name in SDPA_BACKENDS:
        if not cuda:
            errors[name] = NOT_ON_CPU
            continue
        _bench_sdpa(row, errors, name, point, q, k, v, ref, rep_ms, timed=timed)
    # What is served and measured already (our best kernel, or the SDPA backend of a column: the same launch)
    # is measured once: the same kernel timed twice differs by the noise alone.
    column = served.kernel.removeprefix("sdpa_") if served.kernel.startswith("sdpa_") else None
    if served.kernel == own.kernel and served.config == own.config:
        same = "own"
    elif column in SDPA_BACKENDS and any(name == column for name, _ in timed):
        same = column
    else:
        same = None
    if same is None:
        _bench_candidate(row, errors, "served", served, point, q, k, v, ref, cuda=cuda, rep_ms=rep_ms, timed=timed)
    if cuda and point.kv_len != point.seq_len:  # a KV cache: the read of K and V is the floor
        timed.append(("copy", _copy_of_kv(k, v)))
    _time_in_turns(row, errors, point, timed, cuda=cuda, rep_ms=rep_ms, rounds=ROUNDS if cuda else 1)
    if same is not None:
        row.update({f"served_{f}": row[f"{same}_{f}"] for f in (*FIGURES, "rounds_us")})
        row["served_measured_as"] = same
        if same in errors:
            errors["served"] = errors[same]
    row["errors"] = errors
    row.update(_ratios(row))
    row.update(_floor(row, k, v))
    return row


def _copy_of_kv(k: torch.Tensor, v: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A device-to-device copy of as many bytes as K and V hold (one buffer into another), timed like the
    providers: how fast this GPU moves those bytes, the floor of a decode step that reads each once."""
    src = torch.empty(k.numel() + v.numel(), dtype=k.dtype, device=k.device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def _floor(row: Row, k: torch.Tensor, v: torch.Tensor) -> Row:
    """For a point with a KV cache timed next to a copy of its K and V bytes: ``kv_bytes``, the copy's rate
    (``copy_tbps``: bytes read and written per second, a copy moving each byte twice) and per provider
    ``{p}_floor``: its read rate of K and V (bytes / its time) as a fraction of the copy's rate. 1.0 is a kernel
    that reads K and V as fast as this GPU copies; its other reads and writes (q, out, partials) are not
    counted."""
    copy_us = row.pop("copy_us", None)
    for f in ("p95_us", "tflops", "rel_err", "rounds_us", "timing"):
        row.pop(f"copy_{f}", None)
    if not _positive(copy_us):
        return {}
    nbytes = (k.numel() + v.numel()) * k.element_size()
    out: Row = {"kv_bytes": nbytes, "copy_us": copy_us, "copy_tbps": 2 * nbytes / (copy_us * 1e-6) / 1e12}
    for p in PROVIDERS:
        us = row.get(f"{p}_us")
        out[f"{p}_floor"] = copy_us / (2 * us) if _positive(us) else None
    return out


def _bench_candidate(row: Row, errors: dict[str, str], name: str, tk: TunedKernel, point: Point, q, k, v, ref, *,
                     cuda: bool, rep_ms: int, timed: list | None = None) -> None:
    """Gate and time one candidate: our kernels through their launcher on a poisoned ``out``, a backend as its
    users call it."""
    family = get_family(tk.kernel)
    launch = family.launch()
    extra = {"lower_right": True} if point.lower_right else {}
    if family.kind == "backend":
        def call():
            return launch(q, k, v, tk.config, causal=point.causal, **extra)
    else:
        out = torch.full_like(q, float("nan"))  # poisoned: a tile the kernel never writes stays NaN

        def call():
            return launch(q, k, v, tk.config, causal=point.causal, out=out, **extra)
    try:
        _record(row, errors, name, point, ref, call, cuda=cuda, rep_ms=rep_ms, gate=True, timed=timed)
    except KernelError as exc:
        errors[name] = f"{exc.kind}: {exc}"


def bench_tuned_and_sdpa(row: Row, errors: dict[str, str], point: Point, q: torch.Tensor, k: torch.Tensor,
                         v: torch.Tensor, ref: torch.Tensor, launch: Callable, config: dict[str, Any], *,
                         cuda: bool, rep_ms: int) -> None:
    """Time and gate a tuned 16-bit kernel (``launch`` with ``config``, provider "tuned") and each SDPA backend
    at ``point`` into ``row`` (the FP8 bench's fp16 side); what could not run goes into ``errors``."""
    out = torch.full_like(q, float("nan"))
    try:
        _record(row, errors, "tuned", point, ref, lambda: launch(q, k, v, config, causal=point.causal, out=out),
                cuda=cuda, rep_ms=rep_ms, gate=True)
    except KernelError as exc:
        errors["tuned"] = f"{exc.kind}: {exc}"
    for name in SDPA_BACKENDS:
        if not cuda:
            errors[name] = NOT_ON_CPU
            continue
        _bench_sdpa(row, errors, name, point, q, k, v, ref, rep_ms)


def run_bench(points: Iterable[Point], profile: GpuProfile, db: str | Path | None = None, rep_ms: int = 100,
              seed: int = 0, on_point: Callable[[Point, Row], None] | None = None, *, grid: str | None = None,
              kernel: str | None = None, on_partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Bench every point in turn; returns ``{"provenance", "points", "summary", "complete"}`` ready for JSON.

    ``on_point(point, row)`` is called after each point (for a progress bar), ``on_partial(result)`` with the
    result so far (``complete`` false), so that a bench cut short still leaves what it measured. ``grid`` only
    labels the provenance. Call ``select_backend(profile)`` before this, so that the kernels are compiled (or
    interpreted) as the profile needs.
    """
    points = list(points)
    gpu, cc = device_identity(profile)
    prov: dict[str, Any] = dict(provenance(gpu, cc))
    prov.update(profile=profile.name, kernel=kernel or "own + served", grid=grid, dtype=_dtype_label(points),
                rep_ms=rep_ms, seed=seed, timing=CPU_TIMING if profile.interpreter else CUDA_TIMING)
    rows = []
    for point in points:
        row = bench_point(point, profile=profile, db=db, rep_ms=rep_ms, seed=seed, gpu_name=gpu, kernel=kernel)
        rows.append(row)
        if on_point:
            on_point(point, row)
        if on_partial:
            on_partial({"provenance": prov, "points": rows, "summary": summarize(rows), "complete": False})
    return {"provenance": prov, "points": rows, "summary": summarize(rows), "complete": True}


RATIOS = ("best_sdpa_over_own", "best_sdpa_over_served", "cudnn_over_own", "flash_over_own")


def summarize(points: Sequence[Row]) -> dict[str, Any]:
    """Per ratio of ``RATIOS``: its geometric mean over the points where it is defined (null where none is), how
    many points that covers and its minimum; the largest relative error of our kernels and of what is served;
    how many points are served by a backend."""
    out: dict[str, Any] = {"points": len(points)}
    for name in RATIOS:
        values = [r[name] for r in points if _positive(r.get(name))]
        out[f"geomean_{name}"] = geomean(values)
        out[f"n_{name}"] = len(values)
        out[f"min_{name}"] = min(values) if values else None
    for p in ("own", "served"):
        errs = [r[f"{p}_rel_err"] for r in points if r.get(f"{p}_rel_err") is not None]
        out[f"max_{p}_rel_err"] = max(errs) if errs else None
    out["served_by_backend"] = sum(1 for r in points if r.get("served_kernel") and
                                   get_family(r["served_kernel"]).kind == "backend")
    for p in ("own", "served", "cudnn"):  # read rate of K and V as a fraction of a copy's (points with a KV cache)
        floors = [r[f"{p}_floor"] for r in points if _positive(r.get(f"{p}_floor"))]
        long = [r[f"{p}_floor"] for r in points if _positive(r.get(f"{p}_floor")) and r.get("batch") == 1
                and (r.get("kv_len") or 0) >= 32768]
        out[f"geomean_{p}_floor"] = geomean(floors)
        out[f"min_{p}_floor"] = min(floors) if floors else None
        out[f"min_{p}_floor_b1_kv32k"] = min(long) if long else None
    return out


def plot_bench(result: dict[str, Any], path: str | Path, providers: Sequence[str] = PROVIDERS,
               what: str = "our kernels (own), what is served, and PyTorch SDPA") -> None:
    """Write a PNG of TF/s per point for each of ``providers`` (grouped bars) to ``path``.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change). Refused providers leave a
    gap. AutotuneError if matplotlib is missing.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise AutotuneError("--plot needs matplotlib: pip install 'flashcore[plot]'") from None
    rows = result["points"]
    prov = result.get("provenance", {})
    labels = [r.get("label") or Point(r["batch"], r["heads"], r["seq_len"], r["head_dim"], r["causal"],
                                      r["dtype"]).label for r in rows]  # older files have no label
    fig = Figure(figsize=(max(6.0, 0.6 * len(rows) + 3), 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(providers)
    shown: list[float] = []
    handles: list[Any] = []
    for i, p in enumerate(providers):
        xs = [j + (i - (len(providers) - 1) / 2) * width for j in range(len(rows))]
        ys = [r.get(f"{p}_tflops") for r in rows]
        pairs = [(x, y) for x, y in zip(xs, ys) if _positive(y)]
        shown += [y for _, y in pairs]
        ax.bar([x for x, _ in pairs], [y for _, y in pairs], width=width, color=f"C{i}")
        handles.append(Patch(color=f"C{i}", label=p if pairs else f"{p} (no figures)"))
    if shown and max(shown) / min(shown) > 20:
        ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("TF/s")
    ax.set_xlim(-0.6, max(len(rows), 1) - 0.4)
    date = str(prov.get("date", ""))[:10]
    timing = "\nCPU wall time through Triton's interpreter: meaningless for speed" \
        if prov.get("timing") == CPU_TIMING else ""
    grid = f", grid {prov['grid']}" if prov.get("grid") else ""
    fig.suptitle(f"FlashCore bench on {prov.get('gpu', '?')}, {date}\n{prov.get('dtype', '')}{grid}, "
                 f"{what}{timing}", fontsize=10)
    ax.legend(handles=handles, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, format="png", dpi=120)


# --- internals ---------------------------------------------------------------------------------------------

def _record(row: Row, errors: dict[str, str], name: str, point: Point, ref: torch.Tensor,
            fn: Callable[[], torch.Tensor], *, cuda: bool, rep_ms: int, gate: bool = False,
            timed: list | None = None) -> None:
    """Run ``fn`` once, check its output against ``ref``, then time it and fill ``row``'s figures (or, given
    ``timed``, append ``(name, fn)`` to it: ``_time_in_turns`` times them all later).

    Non-finite output leaves the figures null with the reason in ``errors``. With ``gate``, an output outside
    the correctness gate's tolerance is still timed, but the gate's verdict is recorded in ``errors``.
    Exceptions of ``fn`` propagate (the caller knows which ones mean a refusal).
    """
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    verdict = _gate.check(result, ref, point.dtype)
    if not math.isfinite(verdict.rel_err):
        errors[name] = f"output not usable: {verdict.reason}"
        return
    if gate and not verdict.passed:
        errors[name] = f"gate failed: {verdict.reason}"
    del result
    if timed is not None:
        row[f"{name}_rel_err"] = verdict.rel_err
        timed.append((name, fn))
        return
    _fill(row, name, point, [measure(fn, cuda=cuda, rep_ms=rep_ms)], cuda)
    row[f"{name}_rel_err"] = verdict.rel_err


def _time_in_turns(row: Row, errors: dict[str, str], point: Point, timed: list, *, cuda: bool, rep_ms: int,
                   rounds: int) -> None:
    """Time the checked providers of one point in ``rounds`` turns of ``rep_ms / rounds`` each, every turn in a
    rotated order, and fill their figures: the median of the turns' medians, each turn's median in
    ``{name}_rounds_us``. The same kernel at the same point can run 15% slower for seconds on end, and then not
    (an H200 at B64 KV16384 decode: ``benchmarks/probe_decode_timing.py``): timed one after the other, the
    provider timed during such a spell loses; in turns, each is timed in every spell, and ``_ratios`` compares
    providers turn by turn. A provider that raises while timed gets null figures and the reason."""
    samples: dict[str, list] = {name: [] for name, _ in timed}
    for turn in range(rounds):
        first = turn % max(1, len(timed))
        for name, fn in timed[first:] + timed[:first]:
            if name in errors and not errors[name].startswith("gate failed"):
                continue
            try:
                samples[name].append(measure(fn, cuda=cuda, rep_ms=max(1, rep_ms // rounds)))
            except (RuntimeError, KernelError) as exc:
                errors[name] = _refusal(exc, [])
    for name, _ in timed:
        if name in errors and not errors[name].startswith("gate failed"):
            for f in FIGURES:
                row[f"{name}_{f}"] = None
        elif samples[name]:
            _fill(row, name, point, samples[name], cuda)


def _fill(row: Row, name: str, point: Point, timings: list, cuda: bool) -> None:
    methods = {t.method for t in timings}
    if cuda and methods != {CUDA_TIMING}:  # could not be captured: timed directly, host time included
        row[f"{name}_timing"] = ",".join(sorted(methods))
    median = statistics.median(t.median_us for t in timings)
    row[f"{name}_us"] = median
    row[f"{name}_p95_us"] = statistics.median(t.p95_us for t in timings)
    row[f"{name}_tflops"] = point.flops / (median * 1e-6) / 1e12
    row[f"{name}_rounds_us"] = [t.median_us for t in timings]


def _bench_sdpa(row: Row, errors: dict[str, str], name: str, point: Point, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, ref: torch.Tensor, rep_ms: int, timed: list | None = None) -> None:
    """One SDPA backend forced alone (``kernels.backends``: grouped-query heads and the bottom-right mask as SDPA
    takes them); its refusal (with torch's warnings saying why) is recorded."""
    launch = get_family(f"sdpa_{name}").launch()
    extra = {"lower_right": True} if point.lower_right else {}

    def call() -> torch.Tensor:
        return launch(q, k, v, {}, causal=point.causal, **extra)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _record(row, errors, name, point, ref, call, cuda=True, rep_ms=rep_ms, timed=timed)
        except (RuntimeError, KernelError) as exc:  # no kernel of this backend runs here (or out of memory)
            for f in FIGURES:
                row[f"{name}_{f}"] = None
            errors[name] = _refusal(exc, [str(w.message) for w in caught])


def _refusal(exc: BaseException, notes: list[str], limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    why = [_TRIGGERED.sub("", " ".join(n.split())).strip() for n in notes if n.strip()]
    # Drop torch's header lines ("... not used because:") and its notes on the backends we turned off.
    why = [n for n in why if n and "not used because" not in n and "runtime disabled" not in n]
    if why:
        text = f"{text} ({'; '.join(dict.fromkeys(why))})"
    return text[:limit]


def _ratios(row: Row) -> dict[str, float | None]:
    """The speed ratios of a point (> 1: ours is faster): where both sides were timed in the same turns
    (``_time_in_turns``), the median over the turns of each turn's ratio, else the ratio of the medians."""
    backends = [b for b in SDPA_BACKENDS if _positive(row.get(f"{b}_us"))]

    def turns(name: str) -> list | None:
        values = row.get(f"{name}_rounds_us")
        return values if values and all(_positive(x) for x in values) else None

    def ratio(num: list[str], den: str) -> float | None:
        if not num or not _positive(row.get(f"{den}_us")):
            return None
        series = [turns(n) for n in (*num, den)]
        if all(series) and len({len(x) for x in series}) == 1:
            return statistics.median(min(xs[:-1]) / xs[-1] for xs in zip(*series))
        return min(row[f"{n}_us"] for n in num) / row[f"{den}_us"]

    return {
        "best_sdpa_over_own": ratio(backends, "own"),
        "best_sdpa_over_served": ratio(backends, "served"),
        "cudnn_over_own": ratio(["cudnn"] if "cudnn" in backends else [], "own"),
        "flash_over_own": ratio(["flash"] if "flash" in backends else [], "own"),
    }


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _dtype_label(points: Sequence[Point]) -> str | None:
    names = sorted({p.dtype for p in points})
    return ",".join(names) if names else None
