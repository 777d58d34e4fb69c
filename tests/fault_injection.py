"""TEST ONLY: a kernel family that faults on one config, to prove a sweep survives an illegal memory access.

Registered as ``attention_fwd_faulty`` only while FLASHCORE_FAULT_INJECTION=1 (see ``kernels._family``). Its
launcher runs the real attention kernel for every config except one, where it launches :func:`oob_store`,
which writes 2**40 elements past the output: an illegal memory access on a GPU (the CUDA context is dead
afterwards), a segfault in Triton's CPU interpreter.

The faulting config is the search space's default at the point (``SearchSpace.default_for``), for the
profile in use (cpu under the interpreter, default on a GPU): it is in both profiles by construction, it
follows the space as it is edited, and a sweep tries it first (or, when the whole space fits in the trial
budget, among all the others), so every point of a fault-injection sweep meets it with any ``--trials``.
"""

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
import triton
import triton.language as tl

from flashcore.kernels.attention_fwd import launch as _launch


@triton.jit
def oob_store(Out, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(Out + 2**40 + offs, tl.zeros([BLOCK], dtype=Out.dtype.element_ty))


_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def faulty_config(q: torch.Tensor, causal: bool) -> dict[str, Any]:
    """The config this family faults on for inputs like ``q``: the space's default at that point."""
    from flashcore.kernels import load_space

    b, h, s, d = q.shape
    point = SimpleNamespace(batch=b, heads=h, seq_len=s, head_dim=d, causal=bool(causal),
                            dtype=_DTYPE_NAMES.get(q.dtype, str(q.dtype)))
    space = load_space("attention_fwd", "cpu" if _launch.interpreting() else "default")
    return space.default_for(point, None)


def attention_fwd_faulty(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: Mapping[str, Any], *,
                         causal: bool = False, sm_scale: float | None = None,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """``flashcore.kernels.attention_fwd.launch.attention_fwd``, except that :func:`faulty_config` writes far out of bounds."""
    if q.dim() != 4 or dict(config) != faulty_config(q, causal):
        return _launch.attention_fwd(q, k, v, config, causal=causal, sm_scale=sm_scale, out=out)
    _launch.check_inputs(q, k, v)
    out = torch.empty_like(q) if out is None else out
    oob_store[(1,)](out, BLOCK=16)
    return out
