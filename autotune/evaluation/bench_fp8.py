"""`autotune bench --dtype fp8`: the tuned FP8 kernel against the tuned fp16 kernel and PyTorch's SDPA backends.

Library part only (no typer, no printing), in the JSON form of ``autotune.evaluation.bench``
(``{"provenance", "points", "summary"}``). Per point, on the fp16 point's seeded inputs (those of the sweep and
of the fp16 bench):

- ``fp8``: the FP8 kernel alone on inputs quantized beforehand with its recipe (what the sweep times);
- ``fp8_e2e``: quantization (the family's Triton quantizer) plus kernel from the 16-bit inputs (what
  ``get_kernel`` serves); both columns come from the FP8 family's trial hooks (``bench_figures``);
- ``tuned``: the tuned fp16 family the FP8 one is built on (its hooks' ``baseline``) as ``get_kernel`` serves it
  from the fp16 cache (``fp16_db``) when asked for that family: where its fastest candidate is a backend or
  another family (the H200 tables serve cuDNN or Gluon at many points), their configs are not the baseline's;
  the backends have columns of their own;
- ``flash``, ``cudnn``, ``efficient``: SDPA with one backend forced (refused on the CPU).

Each has ``p_us``, ``p_p95_us``, ``p_tflops`` and ``p_rel_err`` (relative L2 error against the fp32 reference of
the unquantized inputs; null where refused). The FP8 config comes from ``get_kernel`` under the point's error
budget (its dtype label); the row names its ``recipe``, ``fp8_tol``, the FP8 gate's figures (``fp8_cosine``,
``fp8_rmse_over_rms_v``, ``fp8_emulated_rel_err``) and ``fp8_outlier_rel_err``: the same recipe's error on the
same inputs with a few values 100x larger (the hooks' ``with_outliers``). An FP8 output outside the gate is still timed,
with the verdict in ``errors``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from flashcore.kernels import KernelError
from flashcore.kernels.reference import attention_reference

from ..core.numbers import geomean
from .bench import CPU_TIMING, CUDA_TIMING, FIGURES, SDPA_BACKENDS, _positive, bench_tuned_and_sdpa
from ..runtime.dispatch import get_kernel
from ..core.problem import Point
from ..tuning.inputs import make_inputs
from ..core.profiles import GpuProfile, device_identity
from ..tuning.timing import measure
from ..core.toolchain import provenance

FP8_PROVIDERS = ("fp8", "fp8_e2e", "tuned", *SDPA_BACKENDS)
RATIOS = ("tuned_over_fp8", "tuned_over_fp8_e2e", "best_sdpa_over_fp8")


def fp8_family():
    """The FP8 family (the registry's family of dtype "fp8") and its trial hooks, which give its bench columns."""
    from flashcore.kernels import families_of_dtype, get_family

    names = families_of_dtype("fp8")
    if not names:
        raise ValueError("no kernel family takes dtype fp8")
    family = get_family(names[0])
    return family, family.trial_hooks()


def fp8_figures(point: Point, config: dict[str, Any], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                ref: torch.Tensor, *, tol: float, cuda: bool, rep_ms: int, outliers: bool = True,
                seed: int = 0) -> tuple[Row, dict[str, str]]:
    """The FP8 family's bench columns of ``config`` on these inputs (its hooks' ``bench_figures``: ``fp8``,
    ``fp8_e2e``, the recipe, the FP8 gate's figures under ``tol``, the error with outliers planted); (figures,
    errors). KernelError propagates (a refusal)."""
    _, hooks = fp8_family()
    row: Row = {}

    def time_fn(name: str, fn: Callable[[], Any]) -> None:
        _time(row, name, point, fn, cuda, rep_ms)

    figures, errors = hooks.bench_figures(point, config, q, k, v, ref, time_fn=time_fn, outliers=outliers,
                                          seed=seed, tol=tol)
    return {**figures, **row}, errors


def bench_fp8_point(point: Point, *, profile: GpuProfile, db: str | Path | None = None,
                    fp16_db: str | Path | None = None, rep_ms: int = 100, seed: int = 0,
                    gpu_name: str | None = None) -> Row:
    """Bench one FP8 point (dtype "fp8" or "fp8-tol<budget>"): the providers of the module docstring, same inputs.

    The flat row has the point's fields, the FP8 ``config`` and its ``source`` (exact, nearest, default), the
    fp16 ``tuned_config`` and ``tuned_source``, the figures per provider, the FP8 figures, the ratios
    ``tuned_over_fp8``, ``tuned_over_fp8_e2e``, ``best_sdpa_over_fp8`` (> 1: FP8 is faster) and ``errors``.
    """
    from flashcore.cache import fp8_tol

    tol = fp8_tol(point.dtype)
    if tol is None:
        raise ValueError(f"bench_fp8_point needs an FP8 point; got dtype {point.dtype}")
    cuda = not profile.interpreter
    gpu_name = gpu_name or device_identity(profile)[0]
    fp16 = dataclasses.replace(point, dtype="float16")
    shape = (point.batch, point.heads, point.seq_len, point.head_dim)
    family, hooks = fp8_family()
    served = get_kernel(shape, point.dtype, point.causal, gpu=gpu_name, db=db, kernel=family.name)
    tuned = get_kernel(shape, torch.float16, point.causal, gpu=gpu_name, db=fp16_db if fp16_db else db,
                       kernel=hooks.baseline)  # launched with the baseline family below: never a backend's {}
    row: Row = {**point.as_dict(), "label": point.label, "config": dict(served.config), "source": served.source,
                "tuned_config": dict(tuned.config), "tuned_source": tuned.source, "recipe": None, "fp8_tol": tol,
                "fp8_cosine": None, "fp8_rmse_over_rms_v": None, "fp8_emulated_rel_err": None,
                "fp8_outlier_rel_err": None, "fp8_outlier_cosine": None}
    for p in FP8_PROVIDERS:
        row.update({f"{p}_{f}": None for f in FIGURES})
    errors: dict[str, str] = {}
    q, k, v = make_inputs(point, "cuda" if cuda else "cpu", seed)  # the fp16 point's inputs (every budget)
    ref = attention_reference(q, k, v, causal=point.causal)
    try:
        figures, fp8_errors = fp8_figures(point, dict(served.config), q, k, v, ref, tol=tol, cuda=cuda,
                                          rep_ms=rep_ms, seed=seed)
        row.update(figures)
        errors.update(fp8_errors)
    except KernelError as exc:
        errors["fp8"] = errors["fp8_e2e"] = f"{exc.kind}: {exc}"
    from flashcore.kernels import get_family

    bench_tuned_and_sdpa(row, errors, fp16, q, k, v, ref, get_family(hooks.baseline).launch(), tuned.config,
                         cuda=cuda, rep_ms=rep_ms)
    row["errors"] = errors
    row.update(ratios(row))
    return row


def run_bench_fp8(points: Iterable[Point], profile: GpuProfile, db: str | Path | None = None,
                  fp16_db: str | Path | None = None, rep_ms: int = 100, seed: int = 0,
                  on_point: Callable[[Point, Row], None] | None = None, *, grid: str | None = None) -> dict[str, Any]:
    """Bench every FP8 point in turn: ``{"provenance", "points", "summary"}`` ready for JSON (see the module)."""
    from flashcore.cache import fp8_tol

    points = list(points)
    gpu, cc = device_identity(profile)
    prov: dict[str, Any] = dict(provenance(gpu, cc))
    labels = sorted({p.dtype for p in points})
    family, hooks = fp8_family()
    prov.update(profile=profile.name, kernel=family.name, fp16_kernel=hooks.baseline, grid=grid,
                dtype=",".join(labels) or None, fp8_tol=fp8_tol(labels[0]) if len(labels) == 1 else None,
                rep_ms=rep_ms, seed=seed, timing=CPU_TIMING if profile.interpreter else CUDA_TIMING,
                **hooks.bench_notes)
    rows = []
    for point in points:
        rows.append(bench_fp8_point(point, profile=profile, db=db, fp16_db=fp16_db, rep_ms=rep_ms, seed=seed,
                                    gpu_name=gpu))
        if on_point:
            on_point(point, rows[-1])
    return {"provenance": prov, "points": rows, "summary": summarize_fp8(rows)}


def ratios(row: Row) -> dict[str, float | None]:
    """tuned / fp8, tuned / fp8_e2e and best SDPA / fp8 (median times; > 1: FP8 is faster), null where undefined."""
    tuned, fp8, e2e = row.get("tuned_us"), row.get("fp8_us"), row.get("fp8_e2e_us")
    sdpa = [row[f"{b}_us"] for b in SDPA_BACKENDS if _positive(row.get(f"{b}_us"))]
    return {
        "tuned_over_fp8": tuned / fp8 if _positive(tuned) and _positive(fp8) else None,
        "tuned_over_fp8_e2e": tuned / e2e if _positive(tuned) and _positive(e2e) else None,
        "best_sdpa_over_fp8": min(sdpa) / fp8 if sdpa and _positive(fp8) else None,
    }


def summarize_fp8(points: Sequence[Row]) -> dict[str, Any]:
    """Geometric means of the ratios over the points where each is defined, and the worst FP8 errors."""
    out: dict[str, Any] = {"points": len(points)}
    for name in RATIOS:
        values = [r[name] for r in points if _positive(r.get(name))]
        out[f"geomean_{name}"] = geomean(values)
        out[f"n_{name}"] = len(values)
    for name, pick in (("fp8_rel_err", max), ("fp8_outlier_rel_err", max), ("fp8_cosine", min)):
        values = [r[name] for r in points if r.get(name) is not None]
        out[f"{'min' if pick is min else 'max'}_{name}"] = pick(values) if values else None
    out["recipes"] = sorted({r["recipe"] for r in points if r.get("recipe")})
    return out


def _time(row: Row, name: str, point: Point, fn: Callable[[], Any], cuda: bool, rep_ms: int) -> None:
    timing = measure(fn, cuda=cuda, rep_ms=rep_ms)
    row[f"{name}_us"] = timing.median_us
    row[f"{name}_p95_us"] = timing.p95_us
    row[f"{name}_tflops"] = point.flops / (timing.median_us * 1e-6) / 1e12


