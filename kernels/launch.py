"""Launchers: check inputs, allocate, compute the grid and strides, call the JIT kernel with a config.

Every failure of a config (compile, resources, launch) comes out as a typed ``KernelError`` so the tuner can
record it as a failed trial and go on.

Config keys (``check_config``): BLOCK_M, BLOCK_N, num_warps, num_stages are required; LOADS ("pointer",
"device_tma" or "host_tma") defaults to "pointer"; the switches CAUSAL_SPLIT, WARP_SPECIALIZE, HEADS_FIRST,
REVERSE and PERSISTENT are booleans that default to False (see attention_fwd.py for what each does).

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
import os
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

import torch
import triton
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources, PTXASError

from ._errors import (KernelCompileError, KernelError, KernelInputError, KernelLaunchError,
                      KernelResourceError)
from .attention_fwd import attn_fwd

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
REQUIRED_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")
SWITCHES = ("CAUSAL_SPLIT", "WARP_SPECIALIZE", "HEADS_FIRST", "REVERSE", "PERSISTENT")  # booleans, False when absent
LOADS = ("pointer", "device_tma", "host_tma")  # config["LOADS"], "pointer" when absent
CONFIG_KEYS = {*REQUIRED_KEYS, "LOADS", *SWITCHES}
_POW2 = {16, 32, 64, 128, 256}
INTERPRETER_PROGRAMS = 3  # persistent programs under the interpreter: fewer than the tiles, so each loops


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise KernelInputError naming the first thing this kernel does not support."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise KernelInputError(
            f"q, k, v must all be (B, H, S, D) of one shape; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise KernelInputError(f"dtype must be float16 or bfloat16 for q, k and v alike; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise KernelInputError("q, k and v must be on one device")
    if q.device.type != "cuda" and not interpreting():
        raise KernelInputError("tensors on the CPU need Triton's interpreter (TRITON_INTERPRET=1)")
    b, h, s, d = q.shape
    if min(b, h, s) < 1:
        raise KernelInputError(f"B, H and S must be at least 1; got {(b, h, s)}")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise KernelInputError(f"head dim must be in 1..{MAX_HEAD_DIM}; got {d}")


def check_config(config: Mapping[str, Any]) -> None:
    """Raise KernelInputError if the config has unknown keys or values the kernel cannot take."""
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise KernelInputError(f"unknown config keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    for key in ("BLOCK_M", "BLOCK_N"):
        if config.get(key) not in _POW2 or isinstance(config.get(key), bool):
            raise KernelInputError(f"{key} must be one of {sorted(_POW2)}; got {config.get(key)!r}")
    if config.get("num_warps") not in (1, 2, 4, 8, 16) or isinstance(config.get("num_warps"), bool):
        raise KernelInputError(f"num_warps must be 1, 2, 4, 8 or 16; got {config.get('num_warps')!r}")
    stages = config.get("num_stages")
    if not isinstance(stages, int) or isinstance(stages, bool) or not 1 <= stages <= 8:
        raise KernelInputError(f"num_stages must be an int in 1..8; got {stages!r}")
    if config.get("LOADS", "pointer") not in LOADS:
        raise KernelInputError(f"LOADS must be one of {', '.join(LOADS)}; got {config.get('LOADS')!r}")
    for key in SWITCHES:
        if not isinstance(config.get(key, False), bool):
            raise KernelInputError(f"{key} must be true or false; got {config[key]!r}")


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: Mapping[str, Any], *,
                  causal: bool = False, sm_scale: float | None = None,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · sm_scale [+ causal mask]) v for (B, H, S, D) inputs, with one kernel config."""
    check_inputs(q, k, v)
    check_config(config)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.device != q.device:
        raise KernelInputError(f"out must be {tuple(q.shape)} on {q.device}; got {tuple(out.shape)} on {out.device}")
    grid, args, kwargs = _kernel_args(q, k, v, out, config, causal, sm_scale)
    with _typed_errors():
        if kwargs["LOADS"] == "device_tma" and q.device.type == "cuda":
            _ensure_allocator()
        kernel = attn_fwd[grid](*args, **kwargs)
        if kwargs["PERSISTENT"] and q.device.type == "cuda":
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
    with _typed_errors():
        kernel = attn_fwd.warmup(*args, grid=grid, **kwargs)
        kernel._init_handles()
    return {"regs": int(kernel.n_regs), "spills": int(kernel.n_spills), "shared": int(kernel.metadata.shared)}


def _kernel_args(q, k, v, out, config, causal, sm_scale):
    """(grid, positional args, keyword args) of the JIT kernel for these inputs and config."""
    b, h, s, d = q.shape
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    block_m, block_n = config["BLOCK_M"], config["BLOCK_N"]
    block_d = max(16, triton.next_power_of_2(d))
    loads = config.get("LOADS", "pointer")
    if loads != "pointer" and not tma_rows_aligned(d, q.element_size()):
        loads = "pointer"
    if loads != "pointer":
        q, k, v = (t if tma_ready(t) else _aligned_copy(t) for t in (q, k, v))
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(out))
    if loads == "host_tma":
        from triton.tools.tensor_descriptor import TensorDescriptor

        q, k, v = (TensorDescriptor(t, list(t.shape), list(_strides(t)), [1, 1, rows, block_d])
                   for t, rows in ((q, block_m), (k, block_n), (v, block_n)))
    heads_first = bool(config.get("HEADS_FIRST", False))
    # S == 1 is a constant to Triton (it specialises int arguments equal to 1), and Triton 3.6's pipeliner then
    # fails on the persistent device-TMA kernel (seen on the H100). One token has one tile per head, so a
    # persistent launch would change nothing: run the plain grid.
    persistent = bool(config.get("PERSISTENT", False)) and s > 1
    num_m = triton.cdiv(s, block_m)
    if persistent:
        grid = (min(num_m * b * h, _persistent_programs(out.device, config, d, out.dtype, causal)),)
    elif heads_first:
        grid = (b * h, num_m)
    else:
        grid = (num_m, b * h)
    args = (q, k, v, out, scale * LOG2E, *strides, h, s, b * h)
    kwargs = dict(
        HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
        CAUSAL=bool(causal), CAUSAL_SPLIT=bool(config.get("CAUSAL_SPLIT", False)), LOADS=loads,
        WARP_SPECIALIZE=bool(config.get("WARP_SPECIALIZE", False)),
        HEADS_FIRST=heads_first, REVERSE=bool(config.get("REVERSE", False)), PERSISTENT=persistent,
        UPCAST_DOT=interpreting() and out.dtype == torch.bfloat16,
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    return grid, args, kwargs


@contextmanager
def _typed_errors():
    """Turn whatever compiling or launching raises into the matching KernelError."""
    try:
        yield
    except KernelError:
        raise
    except OutOfResources as exc:
        raise KernelResourceError(_one_line(exc)) from exc
    except torch.cuda.OutOfMemoryError as exc:
        raise KernelResourceError(_one_line(exc)) from exc
    except (CompilationError, PTXASError) as exc:
        raise KernelCompileError(_one_line(exc)) from exc
    except RuntimeError as exc:
        text = _one_line(exc)
        if "PassManager" in text or "compil" in text.lower():
            raise KernelCompileError(text) from exc
        raise KernelLaunchError(text) from exc


# --- tensor descriptors -------------------------------------------------------------------------------

def tma_rows_aligned(head_dim: int, element_size: int = 2) -> bool:
    """Whether a contiguous row of ``head_dim`` elements has the 16-byte stride a tensor descriptor needs."""
    return head_dim * element_size % 16 == 0


def tma_ready(t: torch.Tensor) -> bool:
    """Whether ``t`` can back per-(batch, head) descriptors as it is: unit last stride, 16-byte aligned base
    and strides (strides of size-1 dims never move an address and do not count)."""
    elt = t.element_size()
    if t.stride(-1) != 1 or t.data_ptr() % 16:
        return False
    return all(st * elt % 16 == 0 for st, n in zip(_strides(t)[:-1], t.shape[:-1]) if n > 1)


def _aligned_copy(t: torch.Tensor) -> torch.Tensor:
    c = t.contiguous()
    return c if c.data_ptr() % 16 == 0 else t.clone(memory_format=torch.contiguous_format)


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    # A size-1 dim's stride is never used to move (its index is 0), but torch may leave it at any value;
    # give it the contiguous one so that alignment checks and descriptor strides see a sane number.
    out, expect = [], 1
    for n, st in reversed(list(zip(t.shape, t.stride()))):
        out.append(expect if n == 1 else st)
        expect = (expect if n == 1 else st) * n
    return tuple(reversed(out))


def _scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    """Global scratch for device-side tensor descriptors (128 bytes per descriptor per program)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator() -> None:
    """Install ``_scratch`` as Triton's allocator where none is set. Triton keeps it in a ContextVar, so a
    new thread (or context) starts without one: checked at each TMA launch, and an allocator the caller
    installed is left alone."""
    try:
        from triton.runtime import _allocation

        if not isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
            return
    except (ImportError, AttributeError):  # another Triton: just set ours
        pass
    triton.set_allocator(_scratch)


# --- persistent grid ----------------------------------------------------------------------------------

_SM_COUNT: dict[int, int] = {}
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
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index] * _OCCUPANCY.get(_occupancy_key(device, config, d, dtype, causal), 1)


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
    props = torch.cuda.get_device_properties(index)
    smem_sm = getattr(props, "shared_memory_per_multiprocessor", 233472)
    warps = config["num_warps"]
    regs_per_warp = -(-max(n_regs, 1) * 32 // 256) * 256  # allocated per warp in units of 256
    by_regs = 65536 // (regs_per_warp * warps)
    by_smem = smem_sm // (shared + 1024) if shared else 32  # 1 KiB per block is reserved by the driver
    by_threads = 2048 // (32 * warps)
    _OCCUPANCY[key] = max(1, min(by_regs, by_smem, by_threads))


def _one_line(exc: BaseException, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
    return text[:limit]
