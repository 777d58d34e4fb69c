"""FP8 quantization in Triton kernels (kernels/attention_fp8/quant_fused.py): ``quantize_fused`` returns what
``kernels.attention_fp8.quant.quantize`` returns, byte for byte, in two passes over each quantized operand instead
of PyTorch's dozen (fp32 copies, padding, division, clamp, cast, V's transposed copy).

``attention_fp8_fused`` is the FP8 attention that ``get_kernel`` serves for a tuned FP8 config: these kernels,
then the tuned FP8 kernel on their output. The tuned kernel and the quantized inputs are the same as the sweep
timed and gated (it quantizes with ``kernels.attention_fp8.quant.quantize``), so the tuned tables stay valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import triton

from .launch import check_inputs
from .quant import _MIN_SCALE, FP8_DTYPE, FP8_MAX, V_ALIGN, QuantizedInputs, Recipe

_WHOLE = 1 << 30  # SCALE_BLOCK when one scale covers every token of a head


def quantize_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, recipe: Recipe, block_m: int,
                   block_n: int) -> QuantizedInputs:
    """``kernels.attention_fp8.quant.quantize`` (same arguments, same result) with Triton kernels."""
    recipe = recipe.canonical()
    b, h, s, d = q.shape
    ones = torch.ones(b, h, 1, dtype=torch.float32, device=q.device)
    if recipe.qk_fp8:
        q, k = _unit_last(q), _unit_last(k)
        # the mean of kernels.attention_fp8.quant.smooth
        mean = k.float().mean(dim=2).contiguous() if recipe.smooth_k else None
        qs, ks = _scales(q, None, recipe.q_scale, block_m), _scales(k, mean, recipe.k_scale, block_n)
        q8 = _cast(q, None, qs, _group(recipe.q_scale, block_m), torch.empty(q.shape, dtype=FP8_DTYPE,
                                                                            device=q.device), transpose=False)
        k8 = _cast(k, mean, ks, _group(recipe.k_scale, block_n), torch.empty(k.shape, dtype=FP8_DTYPE,
                                                                            device=k.device), transpose=False)
    else:
        q8, k8, qs, ks = q, k, ones, ones
    if recipe.pv_fp8:
        v = _unit_last(v)
        vs = _scales(v, None, recipe.v_scale, block_n)
        vt = torch.empty(b, h, d, -(-s // V_ALIGN) * V_ALIGN, dtype=FP8_DTYPE, device=v.device)
        _cast(v, None, vs, _group(recipe.v_scale, block_n), vt, transpose=True)
    else:
        vt, vs = v, ones
    return QuantizedInputs(q8, k8, vt, qs, ks, vs, recipe, block_m, block_n, q.dtype)


def attention_fp8_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: Mapping[str, Any], *,
                        causal: bool = False, sm_scale: float | None = None,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """``kernels.attention_fp8.launch.attention_fp8`` with the quantization done by :func:`quantize_fused`."""
    from .launch import attention_fp8_quantized, check_config, recipe_of

    check_inputs(q, k, v)
    check_config(config)
    qi = quantize_fused(q, k, v, recipe_of(config), config["BLOCK_M"], config["BLOCK_N"])
    return attention_fp8_quantized(qi, config, causal=causal, sm_scale=sm_scale, out=out)


def fused_launcher(config: Mapping[str, Any], causal: bool):
    """``(q, k, v, sm_scale) -> out``: :func:`attention_fp8_fused` with ``config`` (what get_kernel serves)."""
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None) -> torch.Tensor:
        return attention_fp8_fused(q, k, v, config, causal=causal, sm_scale=sm_scale)

    return run


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _group(granularity: str, block: int) -> int:
    return block if granularity == "block" else _WHOLE


def _launch_shape(d: int, block_s: int) -> tuple[int, int]:
    block_d = max(16, triton.next_power_of_2(d))
    return block_d, 8 if block_s * block_d >= 128 * 128 else 4


def _scales(x: torch.Tensor, mean: torch.Tensor | None, granularity: str, block: int) -> torch.Tensor:
    """fp32 (B, H, n) scales amax / 448, as ``kernels.attention_fp8.quant.scales_for`` (of x - mean when ``mean``)."""
    from .quant_fused import block_amax

    b, h, s, d = x.shape
    n = -(-s // block)
    amax = torch.empty(b * h, n, dtype=torch.float32, device=x.device)
    block_d, warps = _launch_shape(d, block)
    block_amax[(n, b * h)](x, mean if mean is not None else amax, amax, x.stride(0), x.stride(1), x.stride(2),
                           h, s, n, HEAD_DIM=d, BLOCK_D=block_d, BLOCK_S=block, SMOOTH=mean is not None,
                           num_warps=warps)
    if granularity == "block":
        a = amax.view(b, h, n)
    elif granularity == "head":
        a = amax.amax(dim=1).view(b, h, 1)
    elif granularity == "tensor":
        a = amax.amax().reshape(1, 1, 1).expand(b, h, 1)
    else:
        raise ValueError(f"unknown scaling granularity {granularity!r}")
    return (a / FP8_MAX).clamp_min(_MIN_SCALE).contiguous()


def _cast(x: torch.Tensor, mean: torch.Tensor | None, scales: torch.Tensor, scale_block: int, y: torch.Tensor,
          *, transpose: bool) -> torch.Tensor:
    """E4M3 of (x - mean) / scale into ``y``: (B, H, S, D), or (B, H, D, S_out) with zeros past S (``transpose``)."""
    from .quant_fused import cast_fp8

    b, h, s, d = x.shape
    s_out = y.shape[3] if transpose else s
    block_s = 64
    block_d, warps = _launch_shape(d, block_s)
    cast_fp8[(-(-s_out // block_s), b * h)](
        x, mean if mean is not None else scales, scales, y, x.stride(0), x.stride(1), x.stride(2),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3), h, s, s_out, scales.shape[2], scale_block,
        HEAD_DIM=d, BLOCK_D=block_d, BLOCK_S=block_s, SMOOTH=mean is not None, TRANSPOSE=transpose,
        num_warps=warps)
    return y
