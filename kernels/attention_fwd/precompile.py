"""Compile a config without inputs or a launch, so that a pool of CPU processes can compile ahead of timing.

Each function builds exactly the arguments the launcher would pass to the JIT kernel, but from ``meta``
tensors (shape, strides and dtype, no memory: Triton specializes a pointer on ``data_ptr() % 16``, which is 0
for them as for any tensor from PyTorch's allocator), and calls Triton's own ``JITFunction.warmup``: the
compiled kernel lands in Triton's on-disk cache, where the launch in the timing process finds it. Nothing is
loaded onto the GPU, so the shared-memory check (at load) is still the timing process's to make.

The contract of a family's precompiler (``KernelFamily.precompiler``): ``(q_shape, kv_shape, dtype, causal,
config, lower_right=False) -> bool``, True when something was compiled, False under the interpreter (which
compiles nothing); raises the launcher's typed ``KernelError`` for a config that does not compile. Its
``compile_key`` (same arguments) says what the compiled kernel depends on, so that a pool compiles it once for
all points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._common import arg_class, interpreting, typed_errors


def _meta(q_shape, kv_shape, dtype):
    q = torch.empty(tuple(q_shape), dtype=dtype, device="meta")
    k, v = (torch.empty(tuple(kv_shape), dtype=dtype, device="meta") for _ in range(2))
    return q, k, v, torch.empty(tuple(q_shape), dtype=dtype, device="meta")


def precompile(q_shape: Sequence[int], kv_shape: Sequence[int], dtype: torch.dtype, causal: bool,
               config: Mapping[str, Any], lower_right: bool = False) -> bool:
    """Compile ``config`` of attention_fwd for contiguous q (B, Hq, S, D) and k, v (B, Hkv, S, D) of ``dtype``."""
    from .launch import _kernel_args, check_config, kernel_for

    check_config(config)
    if interpreting():
        return False
    q, k, v, out = _meta(q_shape, kv_shape, dtype)
    grid, args, kwargs = _kernel_args(q, k, v, out, config, causal, None)
    with typed_errors():
        kernel_for(q, k).warmup(*args, grid=grid, **kwargs)
    return True


def compile_key(q_shape: Sequence[int], kv_shape: Sequence[int], dtype: torch.dtype, causal: bool,
                config: Mapping[str, Any], lower_right: bool = False) -> tuple:
    """What Triton specializes a launch of ``config`` on (so two points with one key compile one kernel): the
    kernel, each int argument's class (``arg_class``), the constexprs and options."""
    from .launch import _kernel_args, kernel_for

    q, k, v, out = _meta(q_shape, kv_shape, dtype)
    _, args, kwargs = _kernel_args(q, k, v, out, config, causal, None)
    return (kernel_for(q, k).__name__,) + tuple(arg_class(a) for a in args) + tuple(sorted(kwargs.items()))


def compile_for_target(cc: int, q_shape: Sequence[int], kv_shape: Sequence[int], dtype: torch.dtype, causal: bool,
                       config: Mapping[str, Any]) -> dict[str, Any]:
    """Compile ``config`` for NVIDIA compute capability ``cc`` (80 for sm_80, 90 for sm_90a), on any machine:
    Triton compiles for a target it does not run on. Returns the PTX target line and the shared memory the
    kernel needs. For checking that the kernels build for GPUs other than the one at hand (and outside the
    interpreter: call it in a process without TRITON_INTERPRET)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .launch import _kernel_args, check_config, kernel_for

    check_config(config)
    q, k, v, out = _meta(q_shape, kv_shape, dtype)
    _, args, kwargs = _kernel_args(q, k, v, out, config, causal, None)
    fn = kernel_for(q, k)
    options = {"num_warps": kwargs.pop("num_warps"), "num_stages": kwargs.pop("num_stages")}
    names = list(fn.arg_names)
    elt = {torch.float16: "fp16", torch.bfloat16: "bf16"}
    signature = {n: ("*" + elt[a.dtype] if isinstance(a, torch.Tensor) else "fp32" if isinstance(a, float) else "i32")
                 for n, a in zip(names, args)}
    signature.update({n: "constexpr" for n in kwargs})
    constexprs = {(names.index(n),): value for n, value in kwargs.items()}
    with typed_errors():
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", cc, 32), options=options)
    target = next((ln.split()[1] for ln in compiled.asm["ptx"].splitlines() if ln.startswith(".target")), "")
    return {"target": target, "shared": int(compiled.metadata.shared)}
