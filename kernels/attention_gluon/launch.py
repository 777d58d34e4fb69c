"""Launcher of the Gluon warp-specialized attention (kernel.py): checks, descriptors, grid, typed errors.

``attention_gluon(q, k, v, config, *, causal=False, sm_scale=None, out=None) -> out`` for q (B, Hq, S, D) and
k, v (B, Hkv, S, D), Hq a multiple of Hkv, float16 or bfloat16 on a CUDA device, D in HEAD_DIMS. Config keys
and defaults: config.CONFIG_DEFAULTS (BLOCK_M and BLOCK_N are required); kernels/attention_gluon/space.toml documents each.

Every tensor is addressed through a 4-D host tensor descriptor [B, H, S, D] with a [1, 1, rows, D] box, so a
tile never reads or writes another head's rows: the TMA unit zero-fills loads past S and clips stores past S.
Descriptors need a unit last stride and 16-byte aligned base and strides; inputs that miss this are copied
(``.contiguous()``) first, and an ``out`` that misses it is written through an aligned temporary.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import torch

from .._errors import KernelInputError
from .._common import SUPPORTED_DTYPES, device_facts, strides as _strides, tma_ready, typed_errors as _typed_errors
from .config import HEAD_DIMS, SM90, config_error, ctas_per_sm, normalized, register_split

LOG2E = 1.4426950408889634
_SM_COUNT: dict[int, int] = {}


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise KernelInputError (one line) naming the first thing this kernel does not take (but the device:
    check_device)."""
    tensors = (q, k, v)
    if any(not isinstance(t, torch.Tensor) for t in tensors):
        raise KernelInputError("q, k and v must be torch tensors")
    if any(t.dim() != 4 for t in tensors):
        raise KernelInputError(f"q, k, v must be 4-D (B, H, S, D); got {[tuple(t.shape) for t in tensors]}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise KernelInputError(f"dtype must be float16 or bfloat16 for q, k and v alike; got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise KernelInputError(f"q, k and v must be on one device; got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise KernelInputError(f"k and v must have one shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    b, hq, s, d = q.shape
    bk, hkv, sk, dk = k.shape
    if bk != b or dk != d:
        raise KernelInputError(f"k, v must be (B={b}, Hkv, S, D={d}); got {tuple(k.shape)}")
    if sk != s:
        raise KernelInputError(f"q and k must have one sequence length; got {s} and {sk}")
    if min(b, hq, hkv, s) < 1:
        raise KernelInputError(f"B, H and S must be at least 1; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if hq % hkv:
        raise KernelInputError(f"query heads ({hq}) must be a multiple of kv heads ({hkv})")
    if d not in HEAD_DIMS:
        raise KernelInputError(f"head dim must be one of {list(HEAD_DIMS)}; got {d}")


def check_device(q: torch.Tensor) -> None:
    """KernelInputError unless the tensors are on a CUDA device (checked after the config, so that config
    errors can be tested without a GPU)."""
    if q.device.type != "cuda":
        raise KernelInputError(f"the Gluon kernel needs CUDA tensors; got {q.device}")


def check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with its defaults filled in; KernelInputError (one line) for unknown keys or bad values."""
    if not isinstance(config, Mapping):
        raise KernelInputError(f"config must be a mapping; got {type(config).__name__}")
    error = config_error(config)
    if error:
        raise KernelInputError(error)
    return normalized(config)


def attention_gluon(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: Mapping[str, Any], *,
                    causal: bool = False, sm_scale: float | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · sm_scale [+ causal mask]) v, with query head h reading kv head h // (Hq // Hkv)."""
    check_inputs(q, k, v)
    cfg = check_config(config)
    check_device(q)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise KernelInputError(f"out must be {tuple(q.shape)} {q.dtype} on {q.device}; "
                               f"got {tuple(out.shape)} {out.dtype} on {out.device}")
    q, k, v = (t if tma_ready(t) else _aligned_copy(t) for t in (q, k, v))
    target = out if tma_ready(out) else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    grid, args, kwargs = kernel_args(q, k, v, target, cfg, causal, sm_scale)
    from .kernel import attn_fwd_ws

    with _typed_errors():
        attn_fwd_ws[grid](*args, **kwargs)
    if target is not out:
        out.copy_(target)
    return out


def kernel_args(q, k, v, out, cfg: Mapping[str, Any], causal: bool, sm_scale: float | None):
    """(grid, positional args, keyword args) of ``attn_fwd_ws`` for these tensors and a normalized config.
    Works on CPU or meta tensors too (compile keys, tests): only the persistent grid asks the device."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    b, hq, s, d = q.shape
    hkv = k.shape[1]
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    block_m, block_n = cfg["BLOCK_M"], cfg["BLOCK_N"]

    def desc(t, rows):
        box = [1, 1, rows, d]
        return TensorDescriptor(t, list(t.shape), list(_strides(t)), box, _box_layout(rows, d, q.dtype))

    tile_m = block_m * cfg["CONSUMERS"]
    num_m = -(-s // tile_m)
    num_tiles = num_m * b * hq
    grid = (num_tiles,)
    if cfg["PERSISTENT"]:
        grid = (min(num_tiles, _sm_count(q.device) * ctas_per_sm(cfg, d, q.element_size())),)
    args = (desc(q, block_m), desc(k, block_n), desc(v, block_n), desc(out, block_m),
            scale * LOG2E, s, hq, hq // hkv, num_m, num_tiles)
    kwargs = dict(HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=cfg["STAGES"], CONSUMERS=cfg["CONSUMERS"],
                  CAUSAL=bool(causal), PERSISTENT=cfg["PERSISTENT"], PINGPONG=cfg["PINGPONG"],
                  OVERLAP=cfg["OVERLAP"], PRODUCER_REGS=cfg["PRODUCER_REGS"], CONSUMER_REGS=cfg["CONSUMER_REGS"],
                  num_warps=4, maxnreg=register_split(cfg)["maxnreg"])
    return grid, args, kwargs


@functools.cache
def _box_layout(rows: int, d: int, dtype: torch.dtype):
    """The shared-memory layout (swizzle) of a [1, 1, rows, d] TMA box: the widest the row allows."""
    from triton.experimental.gluon import language as gl

    elt = gl.float16 if dtype == torch.float16 else gl.bfloat16
    return gl.NVMMASharedLayout.get_default_for([1, 1, rows, d], elt)


def _aligned_copy(t: torch.Tensor) -> torch.Tensor:
    c = t.contiguous()
    return c if tma_ready(c) else t.clone(memory_format=torch.contiguous_format)


def _sm_count(device: torch.device) -> int:
    """The device's SM count (read from it); sm_90's planning figure (search_spaces.arch) only for grids built on
    CPU or meta tensors, which are never launched."""
    if device.type != "cuda":
        return SM90.sm_count
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = device_facts(index).sm_count
    return _SM_COUNT[index]


class GluonServer:
    """What get_kernel serves for attention_gluon: ``server(q, k, v, sm_scale=None) -> out``, the launcher's
    checks, copies and descriptors, launched through ``kernels.fastrun.FastRunner`` (Triton's own launch,
    without its per-call binding and key building)."""

    __slots__ = ("config", "causal", "_cfg")

    def __init__(self, config: Mapping[str, Any], causal: bool = False):
        self.config = dict(config)
        self.causal = bool(causal)
        self._cfg = check_config(config)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None):
        check_inputs(q, k, v)
        check_device(q)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        q, k, v = (t if tma_ready(t) else _aligned_copy(t) for t in (q, k, v))
        grid, args, kwargs = kernel_args(q, k, v, out, self._cfg, self.causal, sm_scale)
        _runner()(grid, args, kwargs)
        return out

    def __repr__(self) -> str:
        return f"GluonServer(config={self.config!r}, causal={self.causal})"


@functools.cache
def _runner():
    from ..fastrun import FastRunner
    from .kernel import attn_fwd_ws

    return FastRunner(attn_fwd_ws)
