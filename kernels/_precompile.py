"""Compile a config without inputs or a launch, so that a pool of CPU processes can compile ahead of timing.

Each function builds exactly the arguments its launcher would pass to the JIT kernel, but from ``meta``
tensors (shape, strides and dtype, no memory: Triton specializes a pointer on ``data_ptr() % 16``, which is 0
for them as for any tensor from PyTorch's allocator), and calls Triton's own ``JITFunction.warmup``: the
compiled kernel lands in Triton's on-disk cache, where the launch in the timing process finds it. Nothing is
loaded onto the GPU, so the shared-memory check (at load) is still the timing process's to make.

Returns True when something was compiled, False under the interpreter (which compiles nothing); raises the
launcher's typed ``KernelError`` for a config that does not compile. The ``compile_key_*`` functions (a
family's ``compile_key``) say what the compiled kernel depends on, so that a pool compiles it once for all points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def precompile_attention_fwd(shape: Sequence[int], dtype: torch.dtype, causal: bool,
                             config: Mapping[str, Any]) -> bool:
    """Compile ``config`` of kernels.attention_fwd for contiguous (B, H, S, D) inputs of ``dtype``."""
    from .attention_fwd import attn_fwd
    from .launch import _kernel_args, _typed_errors, check_config, interpreting

    check_config(config)
    if interpreting():
        return False
    q, k, v, out = (torch.empty(tuple(shape), dtype=dtype, device="meta") for _ in range(4))
    grid, args, kwargs = _kernel_args(q, k, v, out, config, causal, None)
    with _typed_errors():
        attn_fwd.warmup(*args, grid=grid, **kwargs)
    return True


def compile_key_attention_fwd(shape: Sequence[int], dtype: torch.dtype, causal: bool,
                              config: Mapping[str, Any]) -> tuple:
    """What Triton specializes a launch of ``config`` on (so two points with one key compile one kernel): each
    int argument as 1, a multiple of 16 or other; tensors by dtype; descriptors by dtype and block; the
    constexprs and options. Floats are not specialized."""
    from .launch import _kernel_args

    q, k, v, out = (torch.empty(tuple(shape), dtype=dtype, device="meta") for _ in range(4))
    _, args, kwargs = _kernel_args(q, k, v, out, config, causal, None)
    return tuple(_arg_class(a) for a in args) + tuple(sorted(kwargs.items()))


def _arg_class(arg: Any) -> Any:
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



def _fp8_args(shape: Sequence[int], dtype: torch.dtype, causal: bool, config: Mapping[str, Any]):
    """(grid, args, kwargs) of the FP8 kernel for ``config`` on meta inputs, quantized as its launcher does."""
    from .launch_fp8 import _kernel_args, check_config, recipe_of
    from .quant import quantize

    check_config(config)
    q, k, v = (torch.empty(tuple(shape), dtype=dtype, device="meta") for _ in range(3))
    qi = quantize(q, k, v, recipe_of(config), config["BLOCK_M"], config["BLOCK_N"])
    out = torch.empty(tuple(shape), dtype=dtype, device="meta")
    return _kernel_args(qi, out, config, causal, None)


def precompile_attention_fp8(shape: Sequence[int], dtype: torch.dtype, causal: bool,
                             config: Mapping[str, Any]) -> bool:
    """Compile ``config`` (tiles and recipe) of kernels.attention_fp8 for contiguous 16-bit (B, H, S, D) inputs."""
    from .launch import _typed_errors, interpreting

    if interpreting():
        from .launch_fp8 import check_config

        check_config(config)
        return False
    from .attention_fp8 import attn_fwd_fp8

    grid, args, kwargs = _fp8_args(shape, dtype, causal, config)
    with _typed_errors():
        attn_fwd_fp8.warmup(*args, grid=grid, **kwargs)
    return True


def compile_key_attention_fp8(shape: Sequence[int], dtype: torch.dtype, causal: bool,
                              config: Mapping[str, Any]) -> tuple:
    """As :func:`compile_key_attention_fwd`, for the FP8 kernel."""
    _, args, kwargs = _fp8_args(shape, dtype, causal, config)
    return tuple(_arg_class(a) for a in args) + tuple(sorted(kwargs.items()))

