"""Launcher of the FP8 attention kernel (kernels/attention_fp8/kernel.py): quantize, check, call the JIT kernel.

Config keys: BLOCK_M, BLOCK_N, num_warps, num_stages (required, as for the fp16 kernel), CAUSAL_SPLIT (False when
absent) and the recipe's keys (kernels/attention_fp8/quant.py ``CONFIG_FIELDS``: FP8_QK, FP8_PV, Q_SCALE, K_SCALE,
V_SCALE, SMOOTH_K, P_SCALE; the ``Recipe`` defaults when absent). Loads are pointer loads only (no TMA, persistent
or tile-order variants yet).

``attention_fp8`` takes 16-bit q, k, v and quantizes them first; ``attention_fp8_quantized`` takes inputs already
quantized by ``kernels.attention_fp8.quant.quantize`` (so a benchmark can time the kernel without the
quantization, or both).
Every failure comes out as a typed ``KernelError`` like the fp16 launcher's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import triton

from .._config import check_common
from .._errors import KernelInputError
from .._common import LOG2E, SUPPORTED_DTYPES, check_qkv, interpreting, strides, typed_errors
from ..attention_fwd.launch import REQUIRED_KEYS
from .quant import CONFIG_FIELDS, QuantizedInputs, Recipe, quantize

CONFIG_KEYS = {*REQUIRED_KEYS, "CAUSAL_SPLIT", *CONFIG_FIELDS}
# Head dims are padded to this for an E4M3 Q·Kᵀ: Hopper's FP8 wgmma reduces 32 elements per instruction (a
# precaution not yet checked on the GPU; the padding is masked, so it costs only work at D <= 16).
MIN_BLOCK_D_FP8 = 32
_attn_fwd_fp8 = None  # the JIT kernel, imported on first launch (importing this module compiles nothing)


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """The FP8 kernel takes q, k, v of one shape (no grouped-query heads yet)."""
    check_qkv(q, k, v)
    if k.shape != q.shape:
        raise KernelInputError(f"the FP8 kernel needs q, k, v of one shape (no grouped-query heads); got "
                               f"{tuple(q.shape)} and {tuple(k.shape)}")


def recipe_of(config: Mapping[str, Any]) -> Recipe:
    """The config's recipe, canonical; KernelInputError on bad recipe values."""
    try:
        return Recipe.from_config(config).canonical()
    except (TypeError, ValueError) as exc:
        raise KernelInputError(str(exc)) from None


def check_config(config: Mapping[str, Any]) -> None:
    """Raise KernelInputError if the config has unknown keys or values the FP8 kernel cannot take."""
    check_common(config, CONFIG_KEYS)
    if not isinstance(config.get("CAUSAL_SPLIT", False), bool):
        raise KernelInputError(f"CAUSAL_SPLIT must be true or false; got {config['CAUSAL_SPLIT']!r}")
    recipe_of(config)


def attention_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: Mapping[str, Any], *,
                  causal: bool = False, sm_scale: float | None = None,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · sm_scale [+ causal mask]) v for 16-bit (B, H, S, D) inputs, quantized per the config's
    recipe and run by the FP8 kernel; the output has q's dtype."""
    check_inputs(q, k, v)
    check_config(config)
    qi = quantize(q, k, v, recipe_of(config), config["BLOCK_M"], config["BLOCK_N"])
    return attention_fp8_quantized(qi, config, causal=causal, sm_scale=sm_scale, out=out)


def attention_fp8_quantized(qi: QuantizedInputs, config: Mapping[str, Any], *, causal: bool = False,
                            sm_scale: float | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """The FP8 kernel on inputs quantized with the config's recipe and tiles (see ``kernels.attention_fp8.quant``)."""
    check_config(config)
    recipe = recipe_of(config)
    if qi.recipe != recipe:
        raise KernelInputError(f"inputs were quantized for recipe {qi.recipe.label}; the config is {recipe.label}")
    if (qi.block_m, qi.block_n) != (config["BLOCK_M"], config["BLOCK_N"]):
        raise KernelInputError(f"inputs were quantized for tiles {qi.block_m}x{qi.block_n}; the config runs "
                               f"{config['BLOCK_M']}x{config['BLOCK_N']} (block scales follow the tiles)")
    if qi.q.device.type != "cuda" and not interpreting():
        raise KernelInputError("tensors on the CPU need Triton's interpreter (TRITON_INTERPRET=1)")
    if out is None:
        out = torch.empty(qi.shape, dtype=qi.out_dtype, device=qi.q.device)
    elif tuple(out.shape) != qi.shape or out.device != qi.q.device or out.dtype not in SUPPORTED_DTYPES:
        raise KernelInputError(f"out must be 16-bit {qi.shape} on {qi.q.device}; got {out.dtype} "
                               f"{tuple(out.shape)} on {out.device}")
    grid, args, kwargs = _kernel_args(qi, out, config, causal, sm_scale)
    global _attn_fwd_fp8
    with typed_errors():
        if _attn_fwd_fp8 is None:
            from .kernel import attn_fwd_fp8

            _attn_fwd_fp8 = attn_fwd_fp8
        _attn_fwd_fp8[grid](*args, **kwargs)
    return out


def _kernel_args(qi: QuantizedInputs, out: torch.Tensor, config: Mapping[str, Any], causal: bool,
                 sm_scale: float | None):
    """(grid, positional args, keyword args) of the JIT kernel."""
    b, h, s, d = qi.shape
    recipe = qi.recipe
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    block_m, block_n = config["BLOCK_M"], config["BLOCK_N"]
    scales = [x.contiguous() for x in (qi.q_scale, qi.k_scale, qi.v_scale)]
    v = qi.v_tokens_major()  # strides of the (B, H, S, D) view: stride_vn is 1 for the transposed FP8 V
    all_strides = (*strides(qi.q), *strides(qi.k), *v.stride(), *strides(out))
    grid = (triton.cdiv(s, block_m), b * h)
    args = (qi.q, qi.k, v, *scales, out, scale * LOG2E, *all_strides, h, s, *(x.shape[2] for x in scales))
    kwargs = dict(
        HEAD_DIM=d, BLOCK_D=max(MIN_BLOCK_D_FP8 if recipe.qk_fp8 else 16, triton.next_power_of_2(d)),
        BLOCK_M=block_m, BLOCK_N=block_n,
        CAUSAL=bool(causal), CAUSAL_SPLIT=bool(causal and config.get("CAUSAL_SPLIT", False)),
        QK_FP8=recipe.qk_fp8, PV_FP8=recipe.pv_fp8, Q_PER_BLOCK=recipe.q_scale == "block",
        K_PER_BLOCK=recipe.k_scale == "block", V_PER_BLOCK=recipe.v_scale == "block", P_SCALE=recipe.p_scale,
        UPCAST_DOT=interpreting() and qi.out_dtype == torch.bfloat16, ROUND_P=interpreting(),
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    return grid, args, kwargs
