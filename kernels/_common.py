"""What every launcher shares: typed errors, input checks, strides, tensor-descriptor helpers, the interpreter
switch, and the specialization class of a launch argument (for compile keys)."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources, PTXASError

from flashcore.cache import HALF_DTYPES

from ._errors import (KernelCompileError, KernelError, KernelInputError, KernelLaunchError,
                      KernelResourceError)
from .interpreter import interpreting  # noqa: F401  (the launchers' check, kernels/interpreter.py)

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = tuple(getattr(torch, name) for name in HALF_DTYPES)  # the vocabulary: flashcore.cache
MAX_HEAD_DIM = 256


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, same_length: bool = True) -> None:
    """Raise KernelInputError naming the first thing an attention kernel does not support.

    q is (B, Hq, L, D), k and v (B, Hkv, S, D) with Hq a multiple of Hkv (grouped-query heads, as SDPA's
    ``enable_gqa``); ``same_length`` requires L == S.
    """
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise KernelInputError(f"q must be (B, Hq, L, D) and k, v (B, Hkv, S, D) of one shape; got {tuple(q.shape)}, "
                               f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, hq, lq, d = q.shape
    if k.shape[0] != b or k.shape[3] != d:
        raise KernelInputError(f"q and k must agree in batch and head dim; got {tuple(q.shape)} and {tuple(k.shape)}")
    if k.shape[1] < 1 or hq % k.shape[1]:
        raise KernelInputError(f"query heads ({hq}) must be a multiple of key/value heads ({k.shape[1]})")
    if same_length and k.shape[2] != lq:
        raise KernelInputError(f"this kernel needs q and k of one length; got {lq} and {k.shape[2]}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise KernelInputError(f"dtype must be float16 or bfloat16 for q, k and v alike; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise KernelInputError("q, k and v must be on one device")
    if q.device.type != "cuda" and not interpreting():
        raise KernelInputError("tensors on the CPU need Triton's interpreter (TRITON_INTERPRET=1)")
    if min(b, hq, lq, k.shape[2]) < 1:
        raise KernelInputError(f"B, H and the lengths must be at least 1; got {tuple(q.shape)}, {tuple(k.shape)}")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise KernelInputError(f"head dim must be in 1..{MAX_HEAD_DIM}; got {d}")


@contextmanager
def typed_errors():
    """Turn whatever compiling or launching raises into the matching KernelError."""
    try:
        yield
    except KernelError:
        raise
    except OutOfResources as exc:
        raise KernelResourceError(one_line(exc)) from exc
    except torch.cuda.OutOfMemoryError as exc:
        raise KernelResourceError(one_line(exc)) from exc
    except (CompilationError, PTXASError) as exc:
        raise KernelCompileError(one_line(exc)) from exc
    except RuntimeError as exc:
        text = one_line(exc)
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
    return all(st * elt % 16 == 0 for st, n in zip(strides(t)[:-1], t.shape[:-1]) if n > 1)


def aligned_copy(t: torch.Tensor) -> torch.Tensor:
    c = t.contiguous()
    return c if c.data_ptr() % 16 == 0 else t.clone(memory_format=torch.contiguous_format)


def strides(t: torch.Tensor) -> tuple[int, ...]:
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


def ensure_allocator() -> None:
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


@dataclass(frozen=True)
class DeviceFacts:
    """What the hardware says about one CUDA device (``torch.cuda.get_device_properties``), never a constant."""

    name: str
    compute_capability: str  # "9.0"
    sm_count: int
    smem_per_block: int  # shared memory a block may opt in to
    smem_per_sm: int
    regs_per_sm: int
    max_threads_per_sm: int


@functools.cache
def device_facts(index: int) -> DeviceFacts:
    """The facts of CUDA device ``index`` (read once per process)."""
    props = torch.cuda.get_device_properties(index)
    optin = getattr(props, "shared_memory_per_block_optin", 0) or getattr(props, "shared_memory_per_block", 0)
    return DeviceFacts(
        name=props.name, compute_capability=f"{props.major}.{props.minor}",
        sm_count=int(props.multi_processor_count), smem_per_block=int(optin),
        smem_per_sm=int(getattr(props, "shared_memory_per_multiprocessor", 0) or optin),
        regs_per_sm=int(getattr(props, "regs_per_multiprocessor", 0) or 65536),
        max_threads_per_sm=int(getattr(props, "max_threads_per_multi_processor", 0) or 2048))


def arg_class(arg: Any) -> Any:
    """What Triton specializes a launch argument on: an int as 1, a multiple of 16 or other; a tensor by dtype;
    a host descriptor by dtype and block. Floats are not specialized. (For the families' compile keys.)"""
    if isinstance(arg, bool):
        return arg
    if isinstance(arg, int):
        return 1 if arg == 1 else 16 if arg % 16 == 0 else 0
    if isinstance(arg, float):
        return "float"
    if isinstance(arg, torch.Tensor):
        return str(arg.dtype)
    base = getattr(arg, "base", None)  # a host tensor descriptor
    return ("desc", str(getattr(base, "dtype", None)), tuple(getattr(arg, "block_shape", ())))


def one_line(exc: BaseException, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
    return text[:limit]
