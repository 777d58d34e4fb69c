"""PyTorch references for the attention kernels: the fp32 truth the correctness gate compares against."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        sm_scale: float | None = None) -> torch.Tensor:
    """Exact attention in fp32 on upcast inputs, as (B, H, S, D) float32.

    On CUDA it uses SDPA's memory-efficient backend (fp32, no S×S matrix, so S = 32K fits); on the CPU it
    uses SDPA's default CPU path in fp32.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    qf, kf, vf = q.float(), k.float(), v.float()
    if q.is_cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            return F.scaled_dot_product_attention(qf, kf, vf, is_causal=causal, scale=scale)
    return F.scaled_dot_product_attention(qf, kf, vf, is_causal=causal, scale=scale)


def attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    sm_scale: float | None = None) -> torch.Tensor:
    """The textbook formula in fp32 (materialises S×S): a cross-check of ``attention_reference`` in tests."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if causal:
        n = q.shape[-2]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1) @ v.float()
