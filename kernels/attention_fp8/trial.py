"""The FP8 family's extra trial steps (``HOOKS``, named by family.py): what is timed, the FP8 gate instead of the
16-bit one, and its own columns of ``autotune bench --dtype fp8``.

A point whose dtype is an FP8 label ("fp8", "fp8-tol0.03": ``cache.fp8_tol``) is tuned with 16-bit inputs (the
fp16 point's) and gated by gate.py beside this file under the label's error budget: every element written and
finite, relative L2 error against the fp32 reference of the unquantized inputs within the budget, and at most
1.5x the error of the PyTorch emulation of the same recipe and tiles. The budget travels in the point, so the
worker process needs nothing else. The time is the kernel's alone, on inputs quantized once per recipe and tiles
(the bench reports quantization plus kernel as ``fp8_e2e``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

import torch

from .._hooks import GateResult, TrialHooks

KEEP = 2  # quantized inputs and emulations kept per point: about 7 bytes per element of q, so 2 at S = 32K
OUTLIERS = 8  # values per tensor (q, k, v) made OUTLIER_FACTOR times larger
OUTLIER_FACTOR = 100.0


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def with_outliers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seed: int = 0, n: int = OUTLIERS,
                  factor: float = OUTLIER_FACTOR) -> tuple[torch.Tensor, ...]:
    """Copies of q, k, v with ``n`` seeded random elements of each multiplied by ``factor`` (same on any device)."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"outliers:{seed}:{tuple(q.shape)}".encode()))
    out = []
    for x in (q, k, v):
        y = x.clone(memory_format=torch.contiguous_format)
        flat = y.view(-1)
        idx = torch.randint(0, x.numel(), (n,), generator=gen).to(y.device)
        flat[idx] = (flat[idx].float() * factor).to(y.dtype)
        out.append(y)
    return tuple(out)


class Fp8Hooks(TrialHooks):
    """Quantize once per (recipe, tiles) and point, time the kernel on the quantized inputs, gate with gate.py."""

    baseline = "attention_fwd"  # the fp16 kernel this one is built on
    bench_notes = {"outliers": f"{OUTLIERS} values per tensor x{OUTLIER_FACTOR:g}"}

    def kernel_call(self, ctx: Any, config: dict[str, Any], out: torch.Tensor) -> Callable[[], torch.Tensor]:
        """The FP8 kernel on pre-quantized inputs; quantizes and emulates the config's recipe and tiles unless the
        context already holds them. Raises ``KernelError`` for a config the launcher refuses."""
        from .launch import attention_fp8_quantized

        qi, _ = self.operands(ctx, config)
        causal = ctx.point.causal
        return lambda: attention_fp8_quantized(qi, config, causal=causal, out=out)

    def operands(self, ctx: Any, config: dict[str, Any]) -> tuple[Any, torch.Tensor]:
        """(quantized inputs, emulated fp32 output) for the config's recipe and tiles, made once per context."""
        from .launch import check_config, recipe_of
        from .quant import quantize
        from .reference import emulate_quantized

        check_config(config)
        recipe = recipe_of(config)
        key = (recipe, config["BLOCK_M"], config["BLOCK_N"])
        cache = ctx.state.setdefault("fp8_operands", {})
        if key not in cache:
            while len(cache) >= KEEP:
                cache.pop(next(iter(cache)))
            qi = quantize(ctx.q, ctx.k, ctx.v, recipe, config["BLOCK_M"], config["BLOCK_N"])
            cache[key] = (qi, emulate_quantized(qi, causal=ctx.point.causal))
        return cache[key]

    def verdict(self, ctx: Any, config: dict[str, Any], out: torch.Tensor) -> tuple[GateResult, dict[str, Any]]:
        """The FP8 gate's verdict under the point's budget, and the figures to record with the trial: the budget,
        the recipe's label, cosine similarity, RMSE / RMS(V) (FA3's form) and the emulation's error."""
        from flashcore.cache import fp8_tol

        from .gate import report_fp8

        tol = fp8_tol(ctx.point.dtype)
        qi, emulated = self.operands(ctx, config)
        report = report_fp8(out, ctx.ref, emulated, tol, v=ctx.v)
        extra = {"fp8_tol": tol, "recipe": qi.recipe.label, "fp8_cosine": _finite(report.cosine),
                 "fp8_rmse_over_rms_v": _finite(report.rmse_over_rms_v),
                 "fp8_emulated_rel_err": _finite(report.emulated_rel_err), "timed": "kernel on pre-quantized inputs"}
        return report.gate, extra

    def bench_figures(self, point: Any, config: dict[str, Any], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      ref: torch.Tensor, *, time_fn: Callable[[str, Callable[[], Any]], None],
                      outliers: bool = True, seed: int = 0,
                      tol: float | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        """The ``fp8`` (kernel on pre-quantized inputs) and ``fp8_e2e`` (Triton quantizer plus kernel) figures of
        ``config``, its recipe and FP8 gate figures, and (``outliers``) its error with outliers planted;
        (figures, errors); ``tol``: the gate's budget (default: the point's). KernelError propagates (a refusal)."""
        from flashcore.cache import fp8_tol

        from ..reference import attention_reference
        from .gate import cosine, rel_l2, report_fp8
        from .launch import attention_fp8_quantized, check_config, recipe_of
        from .quant import quantize
        from .quant_launch import attention_fp8_fused
        from .reference import emulate_quantized

        check_config(config)
        recipe = recipe_of(config)
        tol = fp8_tol(point.dtype) if tol is None else tol
        row: dict[str, Any] = {"recipe": recipe.label, "fp8_tol": tol}
        errors: dict[str, str] = {}
        causal, bm, bn = point.causal, config["BLOCK_M"], config["BLOCK_N"]
        qi = quantize(q, k, v, recipe, bm, bn)
        out = torch.full_like(q, float("nan"))  # poisoned: a tile never written fails the gate
        attention_fp8_quantized(qi, config, causal=causal, out=out)
        report = report_fp8(out, ref, emulate_quantized(qi, causal=causal), tol, v=v)
        row.update(fp8_cosine=_finite(report.cosine), fp8_rmse_over_rms_v=_finite(report.rmse_over_rms_v),
                   fp8_emulated_rel_err=_finite(report.emulated_rel_err))
        if not math.isfinite(report.gate.rel_err):
            errors["fp8"] = errors["fp8_e2e"] = f"output not usable: {report.gate.reason}"
            return row, errors
        if not report.passed:
            errors["fp8"] = f"FP8 gate failed: {report.gate.reason}"
        time_fn("fp8", lambda: attention_fp8_quantized(qi, config, causal=causal, out=out))
        row["fp8_rel_err"] = report.gate.rel_err
        out_e2e = torch.full_like(q, float("nan"))
        e2e = lambda: attention_fp8_fused(q, k, v, config, causal=causal, out=out_e2e)  # noqa: E731
        e2e()
        row["fp8_e2e_rel_err"] = _finite(rel_l2(out_e2e, ref))
        time_fn("fp8_e2e", e2e)
        del qi, out, out_e2e
        if outliers:
            qo, ko, vo = with_outliers(q, k, v, seed)
            out_o = attention_fp8_fused(qo, ko, vo, config, causal=causal)
            ref_o = attention_reference(qo, ko, vo, causal=causal)
            row.update(fp8_outlier_rel_err=_finite(rel_l2(out_o, ref_o)),
                       fp8_outlier_cosine=_finite(cosine(out_o, ref_o)))
        return row, errors


HOOKS = Fp8Hooks()
