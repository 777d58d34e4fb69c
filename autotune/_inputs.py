"""Seeded test inputs for a point: N(0, 1) with a few planted large values, identical on every device."""

from __future__ import annotations

import dataclasses
import zlib

import torch

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of the inputs and output of a point of cache dtype ``name``: "float16", "bfloat16", and
    float16 for the FP8 labels ("fp8", "fp8-tol0.03": the FP8 kernel takes and returns 16-bit tensors)."""
    try:
        return _DTYPES[name]
    except KeyError:
        pass
    if _fp8_tol(name) is not None:
        return torch.float16
    raise ValueError(f"unsupported dtype {name!r}; choose one of {', '.join(_DTYPES)} or fp8")


def dtype_name(dtype: torch.dtype | str) -> str:
    """The cache dtype name of a torch dtype; a cache dtype label ("float16", "fp8", "fp8-tol0.03") is returned
    as it is once checked, so that ``get_kernel(shape, dtype="fp8-tol0.03", kernel="attention_fp8")`` serves
    the FP8 winner of that error budget."""
    if isinstance(dtype, str):
        if dtype in _DTYPES or _fp8_tol(dtype) is not None:
            return dtype
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {', '.join(_DTYPES)}, fp8 or fp8-tol<budget>")
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}; choose float16 or bfloat16")


def _fp8_tol(name: str) -> float | None:
    from cache import fp8_tol

    return fp8_tol(name)


def make_inputs(point, device: str | torch.device = "cpu", seed: int = 0):
    """q, k, v of ``point`` (B, H, S, D) in its dtype (``torch_dtype``) on ``device``.

    Drawn on the CPU from a generator seeded by (seed, point), so the same point gets the same inputs on any
    machine. A few tokens are planted with large values: queries and keys 8× (logits far beyond exp's range
    without the running max) and values 4× (large outputs), so a kernel that skips the max subtraction, or
    mishandles a tail, cannot pass by luck.
    """
    if _fp8_tol(point.dtype) is not None:  # FP8 points (every budget) get the inputs of the fp16 point
        point = dataclasses.replace(point, dtype="float16")
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{point.label}".encode()))
    shape = (point.batch, point.heads, point.seq_len, point.head_dim)
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    s = point.seq_len
    for t in sorted({0, s // 3, s - 1}):
        q[:, :, t, :] *= 8.0
    for t in sorted({s // 2, s - 1}):
        k[:, :, t, :] *= 8.0
    v[:, :, (s - 1) // 2, :] *= 4.0
    dt = torch_dtype(point.dtype)
    return tuple(x.to(device=device, dtype=dt) for x in (q, k, v))
