"""The FP8 side of a trial (autotune/tuning/trial.py): what is timed, and the FP8 gate instead of the fp16 one.

A point whose dtype is an FP8 label ("fp8", "fp8-tol0.03": ``cache.fp8_tol``) is tuned with 16-bit inputs (the
fp16 point's) and gated by ``autotune.tuning.fp8_gate`` under the label's error budget: every element written and
finite, relative L2 error against the fp32 reference of the unquantized inputs within the budget, and at most
1.5x the error of the PyTorch emulation of the same recipe and tiles. The budget travels in the point, so the
worker process needs nothing else. The time is the kernel's alone, on inputs quantized once per recipe and tiles
(``autotune bench --dtype fp8`` reports quantization plus kernel as ``fp8_e2e``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..core.numbers import finite
from .gate import GateResult

KEEP = 2  # quantized inputs and emulations kept per point: about 7 bytes per element of q, so 2 at S = 32K


def kernel_call(ctx: Any, config: dict[str, Any], out: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The timed call of ``config`` at the context's FP8 point: the FP8 kernel on pre-quantized inputs.

    Quantizes the inputs and runs the emulation for the config's recipe and tiles unless the context already
    holds them. Raises ``KernelError`` for a config the launcher refuses."""
    from flashcore.kernels.attention_fp8.launch import attention_fp8_quantized

    qi, _ = operands(ctx, config)
    causal = ctx.point.causal
    return lambda: attention_fp8_quantized(qi, config, causal=causal, out=out)


def operands(ctx: Any, config: dict[str, Any]) -> tuple[Any, torch.Tensor]:
    """(quantized inputs, emulated fp32 output) for the config's recipe and tiles, made once per context."""
    from flashcore.kernels.attention_fp8.reference import emulate_quantized
    from flashcore.kernels.attention_fp8.launch import check_config, recipe_of
    from flashcore.kernels.attention_fp8.quant import quantize

    check_config(config)
    recipe = recipe_of(config)
    key = (recipe, config["BLOCK_M"], config["BLOCK_N"])
    cache = ctx.fp8_operands
    if key not in cache:
        while len(cache) >= KEEP:
            cache.pop(next(iter(cache)))
        qi = quantize(ctx.q, ctx.k, ctx.v, recipe, config["BLOCK_M"], config["BLOCK_N"])
        cache[key] = (qi, emulate_quantized(qi, causal=ctx.point.causal))
    return cache[key]


def verdict(ctx: Any, config: dict[str, Any], out: torch.Tensor) -> tuple[GateResult, dict[str, Any]]:
    """The FP8 gate's verdict on ``out`` under the point's budget, and the figures to record with the trial:
    the budget, the recipe's label, cosine similarity, RMSE / RMS(V) (FA3's form) and the emulation's error."""
    from .fp8_gate import report_fp8

    qi, emulated = operands(ctx, config)
    report = report_fp8(out, ctx.ref, emulated, ctx.fp8_tol, v=ctx.v)
    extra = {"fp8_tol": ctx.fp8_tol, "recipe": qi.recipe.label, "fp8_cosine": finite(report.cosine),
             "fp8_rmse_over_rms_v": finite(report.rmse_over_rms_v),
             "fp8_emulated_rel_err": finite(report.emulated_rel_err), "timed": "kernel on pre-quantized inputs"}
    return report.gate, extra


