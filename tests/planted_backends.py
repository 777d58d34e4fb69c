"""Planted backends for tests/test_gqa.py: SDPA's math path on the CPU, and a wrong one that forgets the scale."""

import torch.nn.functional as F


def right(q, k, v, config, *, causal=False, sm_scale=None, out=None, lower_right=False):
    result = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=sm_scale,
                                            enable_gqa=k.shape[1] != q.shape[1])
    return result if out is None else out.copy_(result)


def wrong(q, k, v, config, *, causal=False, sm_scale=None, out=None, lower_right=False):
    result = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=1.0,
                                            enable_gqa=k.shape[1] != q.shape[1])
    return result if out is None else out.copy_(result)
