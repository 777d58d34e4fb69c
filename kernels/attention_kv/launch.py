"""Launcher of the attention_kv family: checks, grid, strides, the split-KV workspace, typed errors.

``attention_kv(q, k, v, config, *, causal, lower_right, sm_scale, out)``: q (B, Hq, L, D), k and v (B, Hkv, S, D),
fp16 / bf16, any strides; returns out (B, Hq, L, D) in the input dtype. See kernel.py for the masks and packing.

Config keys: BLOCK_M (16..128), BLOCK_N (16..128), num_warps, num_stages (required); NUM_SPLITS (an int
1..MAX_SPLITS, powers of two or not; 1 when absent) and PACK_GQA (a bool; False when absent).

Split-KV workspace (NUM_SPLITS > 1 only), allocated here at every launch, fp32 and contiguous:
  partial_out (NUM_SPLITS, B, Hq, L, D): split s's softmax-normalized output of each row (0 if it saw no key),
  partial_lse (NUM_SPLITS, B, Hq, L): the natural-log log-sum-exp of its scaled scores (-inf if it saw none).
Then ``combine`` (a second, small kernel) writes out. NUM_SPLITS = 1 writes out from the first kernel directly.
More splits than key blocks is correct (the extra splits are empty: LSE -inf, no contribution); the space's rule
``kv_split_gets_blocks`` keeps such configs out of a sweep because they only add programs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import triton

from .._config import check_common
from .._errors import KernelInputError
from .._common import LOG2E, SUPPORTED_DTYPES, interpreting
from .._common import strides as _strides
from .._common import typed_errors as _typed_errors
from .kernel import attn_kv_combine, attn_kv_fwd

MAX_HEAD_DIM = 256
MAX_SPLITS = 256
TILES = (16, 32, 64, 128)  # BLOCK_M and BLOCK_N
CONFIG_KEYS = {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "NUM_SPLITS", "PACK_GQA"}
COMBINE_ROWS = 16  # (head, position) rows per program of the combine kernel
COMBINE_WARPS = 4


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, lower_right: bool) -> None:
    """Raise KernelInputError naming the first thing this kernel does not support."""
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise KernelInputError(f"q must be (B, Hq, L, D), k and v one (B, Hkv, S, D); got "
                               f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    (b, hq, lq, d), (bk, hkv, s, dk) = q.shape, k.shape
    if bk != b or dk != d:
        raise KernelInputError(f"q and k must agree on B and D; got {tuple(q.shape)} and {tuple(k.shape)}")
    if min(b, hq, lq, hkv, s) < 1:
        raise KernelInputError(f"B, Hq, L, Hkv and S must be at least 1; got {(b, hq, lq, hkv, s)}")
    if hq % hkv:
        raise KernelInputError(f"query heads must be a multiple of kv heads; got Hq={hq}, Hkv={hkv}")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise KernelInputError(f"head dim must be in 1..{MAX_HEAD_DIM}; got {d}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise KernelInputError(f"dtype must be float16 or bfloat16 for q, k and v alike; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise KernelInputError("q, k and v must be on one device")
    if q.device.type not in ("cuda", "meta") and not interpreting():
        raise KernelInputError("tensors on the CPU need Triton's interpreter (TRITON_INTERPRET=1)")
    if lower_right and not causal:
        raise KernelInputError("lower_right only applies with causal=True")
    if causal and lower_right and lq > s:
        raise KernelInputError(f"lower-right causal needs L <= S (rows past S would see no key); got L={lq}, S={s}")


def check_config(config: Mapping[str, Any]) -> None:
    """Raise KernelInputError if the config has unknown keys or values the kernel cannot take."""
    check_common(config, CONFIG_KEYS)
    for key in ("BLOCK_M", "BLOCK_N"):
        if config[key] not in TILES:
            raise KernelInputError(f"{key} must be one of {list(TILES)} for attention_kv; got {config[key]!r}")
    splits = config.get("NUM_SPLITS", 1)
    if not isinstance(splits, int) or isinstance(splits, bool) or not 1 <= splits <= MAX_SPLITS:
        raise KernelInputError(f"NUM_SPLITS must be an int in 1..{MAX_SPLITS}; got {splits!r}")
    if not isinstance(config.get("PACK_GQA", False), bool):
        raise KernelInputError(f"PACK_GQA must be true or false; got {config['PACK_GQA']!r}")


def attention_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: Mapping[str, Any], *,
                 causal: bool = False, lower_right: bool = False, sm_scale: float | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · sm_scale [+ causal mask]) v with grouped kv heads, L != S allowed, for one kernel config."""
    check_inputs(q, k, v, causal, lower_right)
    check_config(config)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.device != q.device or out.dtype != q.dtype:
        raise KernelInputError(f"out must be {tuple(q.shape)} {q.dtype} on {q.device}; got "
                               f"{tuple(out.shape)} {out.dtype} on {out.device}")
    partials = alloc_partials(q, config.get("NUM_SPLITS", 1))
    grid, args, kwargs = _kernel_args(q, k, v, out, partials, config, causal, lower_right, sm_scale)
    with _typed_errors():
        attn_kv_fwd[grid](*args, **kwargs)
    if partials is not None:
        combine(*partials, out)
    return out


def alloc_partials(q: torch.Tensor, num_splits: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The split-KV workspace for q's shape (module docstring), or None for a single split."""
    if num_splits == 1:
        return None
    b, h, lq, d = q.shape
    with _typed_errors():  # a workspace too large for the device is a resource failure of the config
        return (torch.empty((num_splits, b, h, lq, d), dtype=torch.float32, device=q.device),
                torch.empty((num_splits, b, h, lq), dtype=torch.float32, device=q.device))


def combine(partial_out: torch.Tensor, partial_lse: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Merge split partials into ``out`` (B, H, L, D), in place, and return it.

    partial_out (NS, B, H, L, D) fp32 holds each split's normalized output, partial_lse (NS, B, H, L) fp32 its
    natural-log LSE; out = Σ_s exp(lse_s - M) · o_s / Σ_s exp(lse_s - M) with M = max_s lse_s. Splits whose
    LSE is -inf are skipped whatever their partial_out holds; a row with no finite LSE becomes 0."""
    ns = partial_out.shape[0] if partial_out.dim() == 5 else -1
    if ns < 1 or tuple(partial_out.shape[1:]) != tuple(out.shape) or tuple(partial_lse.shape) != tuple(partial_out.shape[:4]):
        raise KernelInputError(f"combine needs partial_out (NS, *out.shape) and partial_lse (NS, B, H, L); got "
                               f"{tuple(partial_out.shape)}, {tuple(partial_lse.shape)}, out {tuple(out.shape)}")
    if partial_out.device != out.device or partial_lse.device != out.device:
        raise KernelInputError("partials and out must be on one device")
    if partial_out.dtype != torch.float32 or partial_lse.dtype != torch.float32:
        raise KernelInputError(f"partials must be float32; got {partial_out.dtype}, {partial_lse.dtype}")
    grid, args, kwargs = _combine_args(partial_out, partial_lse, out)
    with _typed_errors():
        attn_kv_combine[grid](*args, **kwargs)
    return out


def _kernel_args(q, k, v, out, partials, config, causal, lower_right, sm_scale):
    """(grid, positional args, keyword args) of ``attn_kv_fwd`` for these inputs, workspace and config."""
    b, hq, lq, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    pack = bool(config.get("PACK_GQA", False)) and g > 1  # with G = 1 packing is the plain kernel
    num_splits = config.get("NUM_SPLITS", 1)
    n_rows = lq * g if pack else lq
    h_grid = hkv if pack else hq
    grid = (triton.cdiv(n_rows, config["BLOCK_M"]), b * h_grid, num_splits)
    if partials is None:
        po, plse, p_strides = out, out, (0,) * 9  # never read: SPLIT is False
    else:
        po, plse = partials
        p_strides = (*_strides(po), *_strides(plse))
    diag = s - lq if causal and lower_right else 0
    args = (q, k, v, out, po, plse, scale * LOG2E, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
            *p_strides, h_grid, g, s, diag, n_rows)
    kwargs = dict(
        HEAD_DIM=d, BLOCK_D=_block_d(d), BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"],
        CAUSAL=bool(causal), PACK_GQA=pack, SPLIT=partials is not None,
        UPCAST_DOT=interpreting() and q.dtype == torch.bfloat16,
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    return grid, args, kwargs


def _combine_args(partial_out, partial_lse, out):
    ns, b, h, lq, d = partial_out.shape
    grid = (triton.cdiv(h * lq, COMBINE_ROWS), b)
    args = (partial_out, partial_lse, out, ns, h, lq, *_strides(partial_out), *_strides(partial_lse), *_strides(out))
    kwargs = dict(HEAD_DIM=d, BLOCK_D=_block_d(d), BLOCK_R=COMBINE_ROWS, num_warps=COMBINE_WARPS, num_stages=1)
    return grid, args, kwargs


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _meta_inputs(shape_q, shape_kv, dtype):
    q, out = (torch.empty(tuple(shape_q), dtype=dtype, device="meta") for _ in range(2))
    k, v = (torch.empty(tuple(shape_kv), dtype=dtype, device="meta") for _ in range(2))
    return q, k, v, out


def precompile(shape_q: Sequence[int], shape_kv: Sequence[int], dtype: torch.dtype, causal: bool,
               config: Mapping[str, Any], lower_right: bool = False) -> bool:
    """Compile ``config`` (and the combine kernel when it splits) for contiguous inputs of these shapes, from
    ``meta`` tensors through ``JITFunction.warmup``, as kernels/attention_fwd/precompile.py does for attention_fwd. False
    under the interpreter (which compiles nothing); a typed KernelError for a config that does not compile."""
    q, k, v, out = _meta_inputs(shape_q, shape_kv, dtype)
    check_inputs(q, k, v, causal, lower_right)
    check_config(config)
    if interpreting():
        return False
    partials = alloc_partials(q, config.get("NUM_SPLITS", 1))
    grid, args, kwargs = _kernel_args(q, k, v, out, partials, config, causal, lower_right, None)
    with _typed_errors():
        attn_kv_fwd.warmup(*args, grid=grid, **kwargs)
        if partials is not None:
            cgrid, cargs, ckwargs = _combine_args(*partials, out)
            attn_kv_combine.warmup(*cargs, grid=cgrid, **ckwargs)
    return True


def compile_key(shape_q: Sequence[int], shape_kv: Sequence[int], dtype: torch.dtype, causal: bool,
                config: Mapping[str, Any], lower_right: bool = False) -> tuple:
    """What Triton specializes a launch on (as attention_fwd's precompile.compile_key), so that points
    sharing a key compile once. The combine kernel depends only on dtype and D, both in the key already."""
    from .._common import arg_class as _arg_class

    q, k, v, out = _meta_inputs(shape_q, shape_kv, dtype)
    partials = alloc_partials(q, config.get("NUM_SPLITS", 1))
    _, args, kwargs = _kernel_args(q, k, v, out, partials, config, causal, lower_right, None)
    return tuple(_arg_class(a) for a in args) + tuple(sorted(kwargs.items()))
