"""A pure-PyTorch emulation of exactly what the FP8 attention kernel computes (kernels/attention_fp8/kernel.py).

The FP8 gate compares a kernel's error against this emulation's error for the same recipe: quantization error
is the recipe's, anything beyond it is the kernel's. The emulation mirrors the kernel step by step: the same
quantized operands and scales (kernels/attention_fp8/quant.py), the same key blocks of BLOCK_N in the same order
with the online softmax in fp32 (exp2 with the scale folded in), P rounded to E4M3 (times 448 when ``p_scale``)
relative to the running max of the blocks seen so far, exactly as the kernel rounds it, the row sum taken over the
unrounded P, and fp32 accumulation. Products of E4M3 values are exact in fp32, so only summation order and
exp2 differ from the kernel (on the GPU also the FP8 tensor cores' accumulation, which the gate then sees).
"""

from __future__ import annotations

import math

import torch

from .quant import FP8_DTYPE, P_MULT, QuantizedInputs, Recipe, expand_scales, quantize

LOG2E = 1.4426950408889634


def attention_fp8_emulated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, recipe: Recipe, block_m: int,
                           block_n: int, causal: bool = False, sm_scale: float | None = None) -> torch.Tensor:
    """What the FP8 kernel computes for 16-bit (B, H, S, D) inputs quantized by ``recipe`` with these tiles,
    as fp32 (B, H, S, D)."""
    return emulate_quantized(quantize(q, k, v, recipe, block_m, block_n), causal=causal, sm_scale=sm_scale)


def emulate_quantized(qi: QuantizedInputs, *, causal: bool = False, sm_scale: float | None = None) -> torch.Tensor:
    """The emulation on already quantized inputs (see ``attention_fp8_emulated``)."""
    recipe = qi.recipe
    b, h, s, d = qi.q.shape
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    # The kernel multiplies the fp32 Q·Kᵀ of the stored operands by (q_scale · sm_scale · log2 e) · k_scale.
    row_scale = expand_scales(qi.q_scale, qi.block_m, s) * (scale * LOG2E)        # (B, H, S, 1)
    col_scale = expand_scales(qi.k_scale, qi.block_n, s).transpose(-1, -2)        # (B, H, 1, S)
    qf, kf = _operand(qi.q), _operand(qi.k)
    vf = _operand(qi.v_tokens_major())
    v_blocks = expand_scales(qi.v_scale, qi.block_n, s)[..., 0]                   # (B, H, S) per-token V scale
    per_block_v = qi.v_scale.shape[2] > 1
    p_mult = P_MULT if recipe.pv_fp8 and recipe.p_scale else 1.0

    rows = torch.arange(s, device=qi.q.device)
    m = torch.full((b, h, s), float("-inf"), device=qi.q.device)
    l = torch.zeros(b, h, s, device=qi.q.device)
    acc = torch.zeros(b, h, s, d, device=qi.q.device)
    for start in range(0, s, qi.block_n):
        stop = min(start + qi.block_n, s)
        logits = (qf @ kf[:, :, start:stop].transpose(-1, -2)) * (row_scale * col_scale[..., start:stop])
        if causal:
            keep = rows[:, None] >= torch.arange(start, stop, device=rows.device)[None, :]
            logits = logits.masked_fill(~keep, float("-inf"))
        m_new = torch.maximum(m, logits.amax(dim=-1))
        safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows with no key yet
        p = torch.exp2(logits - safe[..., None])
        alpha = torch.exp2(m - safe)
        l = l * alpha + p.sum(dim=-1)
        if recipe.pv_fp8:
            p_op = (p * p_mult).to(FP8_DTYPE).float()
        else:
            p_op = p.to(qi.v.dtype).float()
        contrib = p_op @ vf[:, :, start:stop]
        if per_block_v:
            contrib = contrib * v_blocks[:, :, start][..., None, None]
        acc = acc * alpha[..., None] + contrib
        m = m_new
    final = 1.0 / p_mult
    if not per_block_v:
        final = qi.v_scale[..., None] / p_mult  # (B, H, 1, 1)
    return acc * final / l[..., None]


def _operand(x: torch.Tensor) -> torch.Tensor:
    """fp32 values of a stored operand (E4M3 or 16-bit), exactly."""
    return x.float()
