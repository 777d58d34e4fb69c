"""fp32 PyTorch reference of the attention_kv family: the truth its correctness gate compares against."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_kv_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                           lower_right: bool = False, sm_scale: float | None = None) -> torch.Tensor:
    """Exact attention in fp32 for q (B, Hq, L, D) and k, v (B, Hkv, S, D), as (B, Hq, L, D) float32.

    Query head h reads kv head h // (Hq // Hkv) (SDPA's ``enable_gqa``); the kv heads are repeated explicitly
    so that every SDPA backend applies. ``causal`` alone is SDPA's top-left ``is_causal`` (query i sees keys
    j <= i); with ``lower_right`` it is ``causal_lower_right(L, S)`` (query i sees j <= i + S - L). On CUDA it
    runs SDPA's memory-efficient backend in fp32 (no L x S matrix, so a 32K cache fits; it takes the
    lower-right bias natively); on the CPU, SDPA's math path in fp32.
    """
    lq, s = q.shape[-2], k.shape[-2]
    if lower_right and not causal:
        raise ValueError("lower_right only applies with causal=True")
    if causal and lower_right and lq > s:
        raise ValueError(f"lower-right causal needs L <= S; got L={lq}, S={s}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    g = q.shape[1] // k.shape[1]
    qf = q.float()
    kf, vf = (x.float().repeat_interleave(g, dim=1) if g > 1 else x.float() for x in (k, v))
    kwargs = dict(scale=scale)
    if causal and lower_right and lq != s:
        from torch.nn.attention.bias import causal_lower_right

        kwargs["attn_mask"] = causal_lower_right(lq, s)
    else:
        kwargs["is_causal"] = bool(causal)
    if q.is_cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            return F.scaled_dot_product_attention(qf, kf, vf, **kwargs)
    return F.scaled_dot_product_attention(qf, kf, vf, **kwargs)


def attention_kv_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                       lower_right: bool = False, sm_scale: float | None = None) -> torch.Tensor:
    """The textbook formula in fp32 with an explicit L x S mask (materialised): a cross-check in tests."""
    lq, s = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    g = q.shape[1] // k.shape[1]
    kf, vf = (x.float().repeat_interleave(g, dim=1) for x in (k, v))
    scores = (q.float() @ kf.transpose(-1, -2)) * scale
    if causal:
        shift = s - lq if lower_right else 0
        allowed = torch.ones(lq, s, dtype=torch.bool, device=q.device).tril(shift)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ vf
