"""Seeded test inputs for a point: N(0, 1) with a few planted large values, identical on every device."""

from __future__ import annotations

import dataclasses
import zlib

import torch

from ..core.problem import torch_dtype


def make_inputs(point, device: str | torch.device = "cpu", seed: int = 0):
    """q (B, Hq, L, D) and k, v (B, Hkv, S, D) of ``point`` in its dtype (``torch_dtype``) on ``device``.

    Drawn on the CPU from a generator seeded by (seed, point), so the same point gets the same inputs on any
    machine. A few tokens are planted with large values: queries and keys 8× (logits far beyond exp's range
    without the running max) and values 4× (large outputs), so a kernel that skips the max subtraction, or
    mishandles a tail, cannot pass by luck.
    """
    if point.dtype.startswith("fp8"):  # FP8 points (every budget) get the inputs of the fp16 point
        point = dataclasses.replace(point, dtype="float16")
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{point.label}".encode()))
    q = torch.randn((point.batch, point.heads, point.seq_len, point.head_dim), generator=gen)
    k, v = (torch.randn((point.batch, point.kv_heads, point.kv_len, point.head_dim), generator=gen)
            for _ in range(2))
    lq, lk = point.seq_len, point.kv_len
    for t in sorted({0, lq // 3, lq - 1}):
        q[:, :, t, :] *= 8.0
    for t in sorted({lk // 2, lk - 1}):
        k[:, :, t, :] *= 8.0
    v[:, :, (lk - 1) // 2, :] *= 4.0
    dt = torch_dtype(point.dtype)
    return tuple(x.to(device=device, dtype=dt) for x in (q, k, v))
