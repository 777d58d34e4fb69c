"""Compile an FP8 config ahead of timing (the contract of ``kernels/attention_fwd/precompile.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._common import arg_class, interpreting, typed_errors


def _fp8_args(q_shape: Sequence[int], dtype: torch.dtype, causal: bool, config: Mapping[str, Any]):
    """(grid, args, kwargs) of the FP8 kernel for ``config`` on meta inputs, quantized as its launcher does."""
    from .launch import _kernel_args, check_config, recipe_of
    from .quant import quantize

    check_config(config)
    q, k, v = (torch.empty(tuple(q_shape), dtype=dtype, device="meta") for _ in range(3))
    qi = quantize(q, k, v, recipe_of(config), config["BLOCK_M"], config["BLOCK_N"])
    out = torch.empty(tuple(q_shape), dtype=dtype, device="meta")
    return _kernel_args(qi, out, config, causal, None)


def precompile(q_shape: Sequence[int], kv_shape: Sequence[int], dtype: torch.dtype, causal: bool,
               config: Mapping[str, Any], lower_right: bool = False) -> bool:
    """Compile ``config`` (tiles and recipe) of attention_fp8 for contiguous 16-bit (B, H, S, D) inputs."""
    if interpreting():
        from .launch import check_config

        check_config(config)
        return False
    from .kernel import attn_fwd_fp8

    grid, args, kwargs = _fp8_args(q_shape, dtype, causal, config)
    with typed_errors():
        attn_fwd_fp8.warmup(*args, grid=grid, **kwargs)
    return True


def compile_key(q_shape: Sequence[int], kv_shape: Sequence[int], dtype: torch.dtype, causal: bool,
                config: Mapping[str, Any], lower_right: bool = False) -> tuple:
    """As attention_fwd's ``compile_key``, for the FP8 kernel."""
    _, args, kwargs = _fp8_args(q_shape, dtype, causal, config)
    return tuple(arg_class(a) for a in args) + tuple(sorted(kwargs.items()))
