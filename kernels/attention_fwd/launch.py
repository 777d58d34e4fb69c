"""Launchers: check inputs, allocate, compute the grid and strides, call the JIT kernel with a config.

Every failure of a config (compile, resources, launch) comes out as a typed ``KernelError`` so the tuner can
record it as a failed trial and go on.

Config keys (``check_config``): BLOCK_M, BLOCK_N, num_warps, num_stages are required; LOADS ("pointer",
"device_tma" or "host_tma") defaults to "pointer"; the switches CAUSAL_SPLIT, WARP_SPECIALIZE, HEADS_FIRST,
REVERSE and PERSISTENT are booleans that default to False (see kernel.py for what each does).

Tensor descriptors (both TMA paths) need, per tensor, a unit last stride, 16-byte aligned strides and a
16-byte aligned base. Inputs that miss this only because of their layout are copied with ``.contiguous()``
first (a copy the timing then includes, so the tuner only proposes TMA where the point's own layout
qualifies). When the head dim itself makes rows unaligned (D x element size not a multiple of 16 bytes: D % 8
!= 0 in fp16/bf16), no copy can help and the launcher runs the pointer-load kernel instead (the rule
``tma_needs_aligned_rows`` keeps such configs out of a sweep, so a timing is never credited to the wrong
variant). "device_tma" descriptors live in global scratch: the launcher installs a torch allocator with
``triton.set_allocator`` wherever none is set (Triton keeps it per thread/context). "host_tma" descriptors are
``triton.tools.tensor_descriptor.TensorDescriptor`` objects made here, at every launch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import triton

from .._common import (LOG2E, MAX_HEAD_DIM, SUPPORTED_DTYPES, aligned_copy, check_qkv, device_facts,
                       ensure_allocator, interpreting, strides, tma_ready, tma_rows_aligned, typed_errors)
from .._config import check_common
from .._errors import KernelInputError
from .kernel import attn_fwd, attn_fwd_gqa

# Names other modules and tests use (kept here, where the attention_fwd launcher's readers look for them).
__all__ = ["CONFIG_KEYS", "LOADS", "LOG2E", "MAX_HEAD_DIM", "REQUIRED_KEYS", "SUPPORTED_DTYPES", "SWITCHES",
           "attention_fwd", "check_config", "check_inputs", "compile_info", "interpreting", "kernel_for",
           "tma_ready", "tma_rows_aligned"]
REQUIRED_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")
SWITCHES = ("CAUSAL_SPLIT", "WARP_SPECIALIZE", "HEADS_FIRST", "REVERSE", "PERSISTENT")  # booleans, False when absent
LOADS = ("pointer", "device_tma", "host_tma")  # config["LOADS"], "pointer" when absent
CONFIG_KEYS = {*REQUIRED_KEYS, "LOADS", *SWITCHES}
INTERPRETER_PROGRAMS = 3  # persistent programs under the interpreter: fewer than the tiles, so each loops


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise KernelInputError naming the first thing this kernel does not support (q, k, v of one length;
    grouped-query heads allowed)."""
    check_qkv(q, k, v, same_length=True)


def check_config(config: Mapping[str, Any]) -> None:
    """Raise KernelInputError if the config has unknown keys or values the kernel cannot take."""
    check_common(config, CONFIG_KEYS)
    if config.get("LOADS", "pointer") not in LOADS:
        raise KernelInputError(f"LOADS must be one of {', '.join(LOADS)}; got {config.get('LOADS')!r}")
    for key in SWITCHES:
        if not isinstance(config.get(key, False), bool):
            raise KernelInputError(f"{key} must be true or false; got {config[key]!r}")


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: Mapping[str, Any], *,
                  causal: bool = False, sm_scale: float | None = None,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · sm_scale [+ causal mask]) v for q (B, Hq, S, D) and k, v (B, Hkv, S, D), with one kernel
    config. Hq == Hkv runs ``attn_fwd``; grouped-query heads (Hq a multiple of Hkv) run ``attn_fwd_gqa``."""
    check_inputs(q, k, v)
    check_config(config)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.device != q.device:
        raise KernelInputError(f"out must be {tuple(q.shape)} on {q.device}; got {tuple(out.shape)} on {out.device}")
    grid, args, kwargs = _kernel_args(q, k, v, out, config, causal, sm_scale)
    with typed_errors():
        if kwargs["LOADS"] == "device_tma" and q.device.type == "cuda":
            ensure_allocator()
        kernel = kernel_for(q, k)[grid](*args, **kwargs)
        if kwargs.get("PERSISTENT") and q.device.type == "cuda":
            _learn_occupancy(q.device, config, q.shape[-1], q.dtype, causal, kernel)
    return out


def compile_info(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: Mapping[str, Any], *,
                 causal: bool = False) -> dict[str, int]:
    """Compile (without running) the kernel these inputs and ``config`` would launch, on a CUDA device, and
    return its resources: ``regs`` per thread, ``spills`` (bytes spilled), ``shared`` (bytes per program).
    For probes and for checking the search space's resource rules against the compiler."""
    check_inputs(q, k, v)
    check_config(config)
    if q.device.type != "cuda":
        raise KernelInputError("compile_info needs CUDA tensors (the interpreter compiles nothing)")
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    grid, args, kwargs = _kernel_args(q, k, v, out, config, causal, None)
    with typed_errors():
        kernel = kernel_for(q, k).warmup(*args, grid=grid, **kwargs)
        kernel._init_handles()
    return {"regs": int(kernel.n_regs), "spills": int(kernel.n_spills), "shared": int(kernel.metadata.shared)}


def kernel_for(q: torch.Tensor, k: torch.Tensor):
    """The JIT kernel these inputs launch: ``attn_fwd``, or ``attn_fwd_gqa`` for grouped-query heads."""
    return attn_fwd if k.shape[1] == q.shape[1] else attn_fwd_gqa


def _kernel_args(q, k, v, out, config, causal, sm_scale):
    """(grid, positional args, keyword args) of ``kernel_for(q, k)`` for these inputs and config.

    Grouped-query heads: the host descriptors of "host_tma" are bound to the tensor's own heads and cannot
    follow a shared kv head, so such configs load through device descriptors (the rule ``host_tma_needs_mha``
    keeps them out of a sweep); the persistent order is not in the GQA kernel (not searched anyway)."""
    b, h, s, d = q.shape
    group = h // k.shape[1]
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    block_m, block_n = config["BLOCK_M"], config["BLOCK_N"]
    block_d = max(16, triton.next_power_of_2(d))
    loads = config.get("LOADS", "pointer")
    if loads == "host_tma" and group > 1:
        loads = "device_tma"
    if loads != "pointer" and not tma_rows_aligned(d, q.element_size()):
        loads = "pointer"
    if loads != "pointer":
        q, k, v = (t if tma_ready(t) else aligned_copy(t) for t in (q, k, v))
    all_strides = (*strides(q), *strides(k), *strides(v), *strides(out))
    if loads == "host_tma":
        from triton.tools.tensor_descriptor import TensorDescriptor

        q, k, v = (TensorDescriptor(t, list(t.shape), list(strides(t)), [1, 1, rows, block_d])
                   for t, rows in ((q, block_m), (k, block_n), (v, block_n)))
    heads_first = bool(config.get("HEADS_FIRST", False))
    # S == 1 is a constant to Triton (it specialises int arguments equal to 1), and Triton 3.6's pipeliner then
    # fails on the persistent device-TMA kernel (seen on the H100). One token has one tile per head, so a
    # persistent launch would change nothing: run the plain grid.
    persistent = bool(config.get("PERSISTENT", False)) and s > 1 and group == 1
    num_m = triton.cdiv(s, block_m)
    if persistent:
        grid = (min(num_m * b * h, _persistent_programs(out.device, config, d, out.dtype, causal)),)
    elif heads_first:
        grid = (b * h, num_m)
    else:
        grid = (num_m, b * h)
    args = (q, k, v, out, scale * LOG2E, *all_strides, h, s, b * h) + ((group,) if group > 1 else ())
    kwargs = dict(
        HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
        CAUSAL=bool(causal), CAUSAL_SPLIT=bool(config.get("CAUSAL_SPLIT", False)), LOADS=loads,
        WARP_SPECIALIZE=bool(config.get("WARP_SPECIALIZE", False)),
        HEADS_FIRST=heads_first, REVERSE=bool(config.get("REVERSE", False)), PERSISTENT=persistent,
        UPCAST_DOT=interpreting() and out.dtype == torch.bfloat16,
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    if group > 1:
        del kwargs["PERSISTENT"]
    return grid, args, kwargs


# --- persistent grid ----------------------------------------------------------------------------------

_OCCUPANCY: dict[tuple, int] = {}


def _occupancy_key(device: torch.device, config: Mapping[str, Any], d: int, dtype: torch.dtype, causal: bool):
    return (device.index, dtype, d, bool(causal), *(config.get(k) for k in REQUIRED_KEYS),
            config.get("LOADS", "pointer"), *(bool(config.get(k, False)) for k in SWITCHES))


def _persistent_programs(device, config, d, dtype, causal) -> int:
    """Programs of a persistent launch: SMs × programs that fit on one SM (learnt from the compiled kernel
    after its first launch, one per SM until then); a few under the interpreter."""
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return device_facts(index).sm_count * _OCCUPANCY.get(_occupancy_key(device, config, d, dtype, causal), 1)


def _learn_occupancy(device, config, d, dtype, causal, kernel) -> None:
    key = _occupancy_key(device, config, d, dtype, causal)
    if key in _OCCUPANCY:
        return
    try:
        n_regs = int(kernel.n_regs)
        shared = int(kernel.metadata.shared)
    except (AttributeError, TypeError, ValueError):
        _OCCUPANCY[key] = 1
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    facts = device_facts(index)
    warps = config["num_warps"]
    regs_per_warp = -(-max(n_regs, 1) * 32 // 256) * 256  # allocated per warp in units of 256
    by_regs = facts.regs_per_sm // (regs_per_warp * warps)
    by_smem = facts.smem_per_sm // (shared + 1024) if shared else 32  # 1 KiB per block is reserved by the driver
    by_threads = facts.max_threads_per_sm // (32 * warps)
    _OCCUPANCY[key] = max(1, min(by_regs, by_smem, by_threads))
