"""PyTorch references for the attention kernels: the fp32 truth the correctness gate compares against.

q is (B, Hq, L, D), k and v (B, Hkv, S, D) with Hq a multiple of Hkv (query head h reads key/value head
h // (Hq / Hkv), SDPA's ``enable_gqa``). ``causal`` is SDPA's ``is_causal`` (top-left aligned: query i sees
keys j <= i); ``lower_right`` aligns it bottom-right instead (query i sees keys j <= i + S - L), as
``torch.nn.attention.bias.causal_lower_right`` does: the KV-cache case.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    group = q.shape[1] // k.shape[1]
    if group == 1:
        return k, v
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


def causal_mask(q_len: int, kv_len: int, lower_right: bool, device=None) -> torch.Tensor:
    """(L, S) booleans, True where a query may see a key."""
    offset = kv_len - q_len if lower_right else 0
    rows = torch.arange(q_len, device=device)[:, None]
    cols = torch.arange(kv_len, device=device)[None, :]
    return cols <= rows + offset


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        sm_scale: float | None = None, lower_right: bool = False) -> torch.Tensor:
    """Exact attention in fp32 on upcast inputs, as (B, Hq, L, D) float32.

    On CUDA it uses SDPA's memory-efficient backend (fp32, no L×S matrix, so S = 32K fits; it takes the
    lower-right bias natively); on the CPU it uses SDPA's default CPU path in fp32. Rows that see no key
    (lower-right with L > S) come out as zeros. The one fp32 reference of every family (the attention_kv family's
    unequal lengths and lower-right alignment included).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    lq, s = q.shape[2], k.shape[2]
    qf = q.float()
    kf, vf = _expand_kv(q, k.float(), v.float())
    mask = None
    if causal and lower_right and lq > s:  # some rows see no key: an explicit mask, and zeros for those rows
        mask = causal_mask(lq, s, True, q.device)
    elif causal and lower_right and lq != s:  # SDPA's own bias, which the efficient backend takes natively
        from torch.nn.attention.bias import causal_lower_right

        mask = causal_lower_right(lq, s)
    is_causal = causal and mask is None
    if q.is_cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, is_causal=is_causal, scale=scale)
    else:
        out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, is_causal=is_causal, scale=scale)
    if causal and lower_right and lq > s:
        out = out.masked_fill(~mask.any(dim=1)[:, None], 0.0)  # fully masked rows: zeros, never NaN
    return out


def attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    sm_scale: float | None = None, lower_right: bool = False) -> torch.Tensor:
    """The textbook formula in fp32 (materialises L×S): a cross-check of ``attention_reference`` in tests."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    kf, vf = _expand_kv(q, k.float(), v.float())
    s = (q.float() @ kf.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[2], k.shape[2], lower_right, q.device), float("-inf"))
    return torch.softmax(s, dim=-1) @ vf
