"""A drop-in for ``torch.nn.functional.scaled_dot_product_attention`` backed by the tuned kernels.

``attention(q, k, v, ...)`` takes SDPA's arguments and returns SDPA's result for what the kernels support;
anything else falls back to SDPA itself (never to a wrong answer), or raises with ``strict=True``. The tuned
path is the custom op ``torch.ops.flashcore.attention`` (registered when this module is first imported, with a
fake implementation), so it works inside ``torch.compile(fullgraph=True)``. In plain eager mode (``_eager``:
not compiling, plain tensors, no dispatch or torch-function mode, functorch transform, JIT trace or profiler)
``attention`` calls the op's implementation directly: the op's Python dispatch would cost more host time than
the kernel launch itself, and it adds nothing there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import get_kernel

_DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256


class UnsupportedAttention(ValueError):
    """Raised by ``attention(..., strict=True)`` for inputs the tuned kernels do not support."""


def _attention_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool,
                    scale: float | None) -> torch.Tensor:
    kernel = get_kernel(tuple(q.shape), dtype=q.dtype, causal=is_causal)
    return kernel(q, k, v, sm_scale=scale)


_attention_op = torch.library.custom_op("flashcore::attention", _attention_impl, mutates_args=())


@_attention_op.register_fake
def _attention_fake(q, k, v, is_causal, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def unsupported_reason(q, k, v, attn_mask=None, dropout_p=0.0, enable_gqa=False) -> str | None:
    """Why the tuned kernels cannot compute this call exactly as SDPA would, or None when they can."""
    # The common supported call (CUDA, no extras) in one pass. Together these conditions imply that every check
    # in _reason passes, so this returns None only where _reason would; anything else gets _reason's answer.
    if attn_mask is None and not dropout_p and not enable_gqa and q.is_cuda:
        shape = q.shape
        if (len(shape) == 4 and k.shape == shape and v.shape == shape and 1 <= shape[3] <= MAX_HEAD_DIM
                and min(shape) >= 1):
            dtype = q.dtype
            if (dtype in _DTYPES and k.dtype == dtype and v.dtype == dtype
                    and k.device == q.device and v.device == q.device
                    and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))):
                return None
    return _reason(q, k, v, attn_mask, dropout_p, enable_gqa)


def _reason(q, k, v, attn_mask, dropout_p, enable_gqa) -> str | None:
    if attn_mask is not None:
        return "attention masks are not supported (use is_causal)"
    if dropout_p:
        return "dropout is not supported"
    if enable_gqa:
        return "grouped-query attention is not supported"
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        return f"q, k, v must be (B, H, S, D) of one shape; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype} is not supported (float16, bfloat16)"
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM or min(q.shape) < 1:
        return f"shape {tuple(q.shape)} is not supported (head dim 1..{MAX_HEAD_DIM}, no empty dims)"
    if q.device != k.device or q.device != v.device:
        return "q, k and v are on different devices"
    if q.device.type != "cuda":
        from kernels.launch import interpreting

        if q.device.type != "cpu" or not interpreting():
            return f"{q.device.type} tensors are not supported (CUDA, or the CPU under TRITON_INTERPRET=1)"
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return "backward is not implemented"
    return None


_Tensor = torch.Tensor


def _eager(q, k, v) -> bool:
    """Whether calling the op's implementation directly is the same as calling the op: plain eager mode with
    plain tensors, nothing that traces, transforms, intercepts or profiles torch calls."""
    return (not torch.compiler.is_compiling() and type(q) is _Tensor and type(k) is _Tensor and type(v) is _Tensor
            and not torch._C._len_torch_dispatch_stack() and not torch._C._is_torch_function_mode_enabled()
            and torch._C._functorch.peek_interpreter_stack() is None and not torch._C._get_tracing_state()
            and not torch.autograd._profiler_enabled())


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
              enable_gqa: bool = False, *, strict: bool = False) -> torch.Tensor:
    """``scaled_dot_product_attention`` with the tuned kernel where supported, SDPA elsewhere.

    ``strict=True`` raises UnsupportedAttention naming what is unsupported instead of falling back.
    """
    reason = unsupported_reason(q, k, v, attn_mask, dropout_p, enable_gqa)
    if reason is None:
        if _eager(q, k, v):
            return _attention_impl(q, k, v, bool(is_causal), scale)
        return torch.ops.flashcore.attention(q, k, v, is_causal, scale)
    if strict:
        raise UnsupportedAttention(reason)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale, enable_gqa=enable_gqa)
