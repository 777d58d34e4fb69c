"""One trial: check the rules, run the config on poisoned output, gate it against fp32, then time it.

This is the only place a sweep touches the GPU; timing policy changes here and nowhere else. Isolation (a worker
process per sweep, replaced after a crash) lives in ``worker.py``, which calls :func:`prepare` and
:func:`run_trial` in the child.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from flashcore.kernels import KernelError, TrialHooks

from ..core.numbers import finite
from . import gate as _gate
from .inputs import make_inputs
from .timing import measure


@dataclass
class PointContext:
    """Inputs and the fp32 reference of one point, made once and shared by all its trials."""

    point: Any
    family: Any
    profile: Any
    space: Any
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    ref: torch.Tensor
    cuda: bool
    hooks: TrialHooks | None = None  # the family's extra trial steps (KernelFamily.trial), or None
    state: dict = field(default_factory=dict)  # what the hooks keep per point (FP8: quantized inputs per recipe)


@dataclass
class TrialOutcome:
    """What one trial produced: its figures, or the failure status and one-line reason."""

    status: str  # "ok" or a failure status of cache.TRIAL_STATUSES
    reason: str = ""
    median_us: float | None = None
    p95_us: float | None = None
    p99_us: float | None = None
    tflops: float | None = None
    rel_err: float | None = None
    max_abs_err: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    fatal: bool = False  # the device may be unusable after this trial (dead CUDA context): replace the worker


def prepare(point, family, profile, space, seed: int = 0, base: PointContext | None = None) -> PointContext:
    """Make the point's inputs on the profile's device and its fp32 reference (taken from ``base``, the context
    of another candidate at the same point, when given).

    The gate is the family's: its trial hooks' (``KernelFamily.trial``: FP8 gates under the budget of its
    dtype label, "fp8-tol0.03"), else the 16-bit gate; a family that does not take the dtype (an FP8 family at
    float16, a 16-bit one at fp8) or the problem (grouped-query heads, unequal lengths) is refused here, so no
    trial is ever gated by the wrong gate or run on a problem its kernel does not compute.
    """
    from flashcore.cache import base_dtype

    dtypes = getattr(family, "dtypes", None)  # test families may leave it out
    if dtypes is not None and base_dtype(point.dtype) not in dtypes:
        raise ValueError(f"kernel {family.name} takes dtype {' or '.join(dtypes)}, not {point.dtype}")
    supports = getattr(family, "supports", None)
    why = supports(point.heads, point.kv_heads, point.seq_len, point.kv_len, point.head_dim) if supports else None
    if why:
        raise ValueError(f"{why} ({point.label})")
    cuda = not profile.interpreter
    if base is not None and base.point == point:
        q, k, v, ref = base.q, base.k, base.v, base.ref
    else:
        q, k, v = make_inputs(point, "cuda" if cuda else "cpu", seed)
        ref = family.reference_fn()(q, k, v, causal=point.causal, lower_right=point.lower_right)
    hooks = family.trial_hooks() if hasattr(family, "trial_hooks") else None  # test families may leave it out
    return PointContext(point, family, profile, space, q, k, v, ref, cuda, hooks)


def run_trial(ctx: PointContext, config: dict[str, Any], *, rep_ms: int = 100, time_it: bool = True,
              rules: bool = True) -> TrialOutcome:
    """Run ``config`` at the context's point and return its outcome; never raises for a bad config.

    ``time_it=False`` stops after the gate and ``rules=False`` skips the search space's validity rules (both
    for ``autotune validate``, which asks only whether a served config is correct). A device error that is
    not a ``KernelError`` (an illegal memory access surfaces at the synchronisation, as a RuntimeError) is a
    "launch_error" marked ``fatal`` on CUDA, since the context is dead after it; out of device memory is
    "resources".
    """
    broken = ctx.space.violations(config, ctx.point, ctx.profile) if rules and ctx.space is not None else []
    if broken:
        return TrialOutcome("invalid", "; ".join(broken))
    launch = ctx.family.launch()
    extra_args = {"lower_right": True} if ctx.point.lower_right else {}
    backend = getattr(ctx.family, "kind", "triton") == "backend"
    t0 = time.perf_counter()
    try:
        out = torch.full_like(ctx.q, float("nan"))
        if ctx.hooks is None:
            call = lambda: launch(ctx.q, ctx.k, ctx.v, config, causal=ctx.point.causal, out=out,  # noqa: E731
                                  **extra_args)
        else:  # the family's steps before the timed call (FP8: quantize once per recipe and tiles) are not timed
            call = ctx.hooks.kernel_call(ctx, config, out)
            if ctx.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        call()
        if ctx.cuda:
            torch.cuda.synchronize()
    except KernelError as exc:
        return TrialOutcome(exc.kind, str(exc))
    except RuntimeError as exc:
        return _device_failure(ctx, exc)
    first_s = time.perf_counter() - t0
    if ctx.hooks is None:
        verdict, gate_extra = _gate.check(out, ctx.ref, ctx.point.dtype), {}
    else:
        verdict, gate_extra = ctx.hooks.verdict(ctx, config, out)
    figures = dict(rel_err=finite(verdict.rel_err), max_abs_err=finite(verdict.max_abs_err))
    extra = {"first_call_s": round(first_s, 4), **gate_extra}
    if not verdict.passed:
        return TrialOutcome("gate_failed", verdict.reason, **figures, extra=extra)
    if not time_it:
        return TrialOutcome("ok", "", **figures, extra=extra)
    if backend:  # time what a user of the backend runs: it allocates its own output (no copy into ``out``)
        call = lambda: launch(ctx.q, ctx.k, ctx.v, config, causal=ctx.point.causal, **extra_args)  # noqa: E731
    try:
        timing = measure(call, cuda=ctx.cuda, rep_ms=rep_ms)
    except KernelError as exc:
        return TrialOutcome(exc.kind, str(exc), **figures)
    except RuntimeError as exc:
        return _device_failure(ctx, exc, figures)
    tflops = ctx.point.flops / (timing.median_us * 1e-6) / 1e12
    return TrialOutcome("ok", "", timing.median_us, timing.p95_us, timing.p99_us, tflops, **figures,
                        extra={**extra, "timing": timing.method})


def _device_failure(ctx: PointContext, exc: RuntimeError, figures: dict[str, Any] | None = None) -> TrialOutcome:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
    if isinstance(exc, torch.OutOfMemoryError):
        if ctx.cuda:
            torch.cuda.empty_cache()
        return TrialOutcome("resources", reason, **(figures or {}))
    return TrialOutcome("launch_error", reason, **(figures or {}), fatal=ctx.cuda)
