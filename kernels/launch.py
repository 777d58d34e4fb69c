"""Launchers: check inputs, allocate, compute the grid and strides, call the JIT kernel with a config.

Every failure of a config (compile, resources, launch) comes out as a typed ``KernelError`` so the tuner can
record it as a failed trial and go on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
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
CONFIG_KEYS = {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "CAUSAL_SPLIT"}
_POW2 = {16, 32, 64, 128, 256}


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
        raise KernelInputError(f"unknown config keys {sorted(unknown)}")
    for key in ("BLOCK_M", "BLOCK_N"):
        if config.get(key) not in _POW2:
            raise KernelInputError(f"{key} must be one of {sorted(_POW2)}; got {config.get(key)!r}")
    if config.get("num_warps") not in (1, 2, 4, 8, 16):
        raise KernelInputError(f"num_warps must be 1, 2, 4, 8 or 16; got {config.get('num_warps')!r}")
    if not isinstance(config.get("num_stages"), int) or not 1 <= config["num_stages"] <= 8:
        raise KernelInputError(f"num_stages must be an int in 1..8; got {config.get('num_stages')!r}")


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: Mapping[str, Any], *,
                  causal: bool = False, sm_scale: float | None = None,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · sm_scale [+ causal mask]) v for (B, H, S, D) inputs, with one kernel config."""
    check_inputs(q, k, v)
    check_config(config)
    b, h, s, d = q.shape
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    block_m, block_n = config["BLOCK_M"], config["BLOCK_N"]
    grid = (triton.cdiv(s, block_m), b * h)
    try:
        attn_fwd[grid](
            q, k, v, out, scale * LOG2E,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            h, s,
            HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
            BLOCK_M=block_m, BLOCK_N=block_n,
            CAUSAL=bool(causal), CAUSAL_SPLIT=bool(config.get("CAUSAL_SPLIT", False)),
            UPCAST_DOT=interpreting() and q.dtype == torch.bfloat16,
            num_warps=config["num_warps"], num_stages=config["num_stages"],
        )
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
    return out


def _one_line(exc: BaseException, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
    return text[:limit]
