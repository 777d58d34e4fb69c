"""A drop-in for ``torch.nn.functional.scaled_dot_product_attention`` backed by the tuned candidates.

``attention(q, k, v, ...)`` takes SDPA's arguments and returns SDPA's result for what the candidates support:
q (B, Hq, L, D), k and v (B, Hkv, S, D), grouped-query heads with ``enable_gqa=True`` (as SDPA), L != S,
``is_causal=True`` (SDPA's top-left aligned mask) and ``attn_mask=causal_lower_right(L, S)`` or
``causal_upper_left(L, S)`` (``torch.nn.attention.bias``), which are served without materializing a mask.
Anything else (other masks, dropout, fp32, gradients) falls back to SDPA itself (never to a wrong answer), or
raises with ``strict=True``. The tuned path is the custom op ``torch.ops.flashcore.attention`` (registered
when this module is first imported, with a fake implementation), so it works inside
``torch.compile(fullgraph=True)``. In plain eager mode (``_eager``: not compiling, plain tensors, no dispatch
or torch-function mode, functorch transform, JIT trace or profiler) ``attention`` calls the op's
implementation directly: the op's Python dispatch would cost more host time than the kernel launch itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashcore.cache import HALF_DTYPES
from flashcore.kernels import FAMILIES, KernelInputError, families
from flashcore.kernels._common import MAX_HEAD_DIM, check_qkv
from flashcore.kernels.backends import Pinned

from .dispatch import PLANS, TO_SDPA, get_kernel, runner_for

_DTYPES = tuple(getattr(torch, name) for name in HALF_DTYPES)
# Smaller softmax scales (and non-positive ones) go to SDPA: scale x log2(e) would flush towards zero in fp32,
# and a masked -inf times a scale <= 0 is NaN in our kernels where SDPA gives finite values.
MIN_SCALE = 2.0 ** -20


class UnsupportedAttention(ValueError):
    """Raised by ``attention(..., strict=True)`` for inputs the tuned candidates do not support."""


def _attention_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, scale: float | None,
                    lower_right: bool = False) -> torch.Tensor:
    kernel = get_kernel(q.shape, q.dtype, is_causal, kv_heads=k.shape[1], kv_len=k.shape[2],
                        lower_right=lower_right)
    return kernel(q, k, v, sm_scale=scale)


_attention_op = torch.library.custom_op("flashcore::attention", _attention_impl, mutates_args=())


@_attention_op.register_fake
def _attention_fake(q, k, v, is_causal, scale, lower_right=False):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _causal_bias(attn_mask) -> bool | None:
    """For a ``torch.nn.attention.bias.CausalBias``: True if aligned bottom-right, False if top-left; else None."""
    if attn_mask is None:
        return None
    from torch.nn.attention.bias import CausalBias, CausalVariant

    if not isinstance(attn_mask, CausalBias):  # (a CausalBias is a tensor subclass: test it first)
        return None
    return attn_mask.variant == CausalVariant.LOWER_RIGHT


_ANY_LENGTHS: dict[int, bool] = {}  # registered families (their count) -> whether one of ours takes L != S


def _any_lengths() -> bool:
    found = _ANY_LENGTHS.get(len(FAMILIES))
    if found is None:
        found = _ANY_LENGTHS[len(FAMILIES)] = any(f.lengths == "any" and f.kind != "backend" for f in families())
    return found


def unsupported_reason(q, k, v, attn_mask=None, dropout_p=0.0, enable_gqa=False, is_causal=False,
                       scale=None) -> str | None:
    """Why the tuned candidates cannot compute this call exactly as SDPA would, or None when they can."""
    # The common supported call (CUDA, no mask or dropout: equal lengths or a KV cache, grouped heads with
    # enable_gqa) in one pass. Together these conditions imply that every check below passes.
    if attn_mask is None and not dropout_p and _supported_fast(q, k, v, q.shape, k.shape, enable_gqa, scale):
        return None
    return _reason(q, k, v, attn_mask, dropout_p, enable_gqa, is_causal, scale)


def _supported_fast(q, k, v, qs, ks, enable_gqa, scale) -> bool:
    """Whether a call without mask or dropout is one the tuned candidates compute exactly (True implies that
    ``_reason`` finds nothing; False says nothing)."""
    return (q.is_cuda and (scale is None or scale >= MIN_SCALE) and len(qs) == 4 and len(ks) == 4
            and v.shape == ks and ks[0] == qs[0] and ks[3] == qs[3] and 1 <= qs[3] <= MAX_HEAD_DIM
            and min(qs) >= 1 and min(ks) >= 1 and (ks[1] == qs[1] or (enable_gqa and qs[1] % ks[1] == 0))
            and (ks[2] == qs[2] or _any_lengths()) and q.dtype in _DTYPES and k.dtype == q.dtype
            and v.dtype == q.dtype and k.device == q.device and v.device == q.device
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)))


def _planned_ok(q, k, v, qs, ks, enable_gqa, scale) -> bool:
    """Whether a call of a class that has a plan naming our kernel is one that kernel computes exactly. A plan is
    recorded only for a call that passed the whole check (``serve`` after ``unsupported_reason``), and the class
    fixes q's shape, the kv heads, the kv length's power of two and q's dtype: what that call's check found of
    those holds for every call of the class. What the class does not fix is checked here: the device, the
    scale, k's and v's batch, length and head dim, enable_gqa, k's and v's dtypes, gradients."""
    return (q.is_cuda and (scale is None or scale >= MIN_SCALE) and v.shape == ks and ks[0] == qs[0]
            and ks[3] == qs[3] and ks[2] >= 1 and (enable_gqa or ks[1] == qs[1]) and k.dtype == q.dtype
            and v.dtype == q.dtype and k.device == q.device and v.device == q.device
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)))


def _reason(q, k, v, attn_mask, dropout_p, enable_gqa, is_causal, scale=None) -> str | None:
    if scale is not None and not scale >= MIN_SCALE:
        return f"a softmax scale below {MIN_SCALE:g} (got {scale!r}) is left to SDPA"
    if attn_mask is not None:
        bias = _causal_bias(attn_mask)
        if bias is None:
            return "attention masks other than causal_lower_right / causal_upper_left are not supported"
        if is_causal:
            return "is_causal together with a causal bias (SDPA refuses it too)"
        if q.dim() == 4 and k.dim() == 4 and (attn_mask.seq_len_q, attn_mask.seq_len_kv) != (q.shape[2], k.shape[2]):
            return "the causal bias's lengths differ from q's and k's"
    if dropout_p:
        return "dropout is not supported"
    if q.dim() == 4 and k.dim() == 4 and k.shape[1] != q.shape[1] and not enable_gqa:
        return "q and k have different head counts but enable_gqa is False (SDPA refuses it)"
    if q.dtype not in _DTYPES:
        return f"dtype {q.dtype} is not supported (float16, bfloat16)"
    if q.dim() == 4 and k.dim() == 4 and q.shape[2] != k.shape[2] and not _any_lengths():
        return "q and k of different lengths need a kernel family of unequal lengths, and none is installed"
    try:
        check_qkv(q, k, v, same_length=False)
    except KernelInputError as exc:
        return str(exc)
    if attn_mask is not None and _causal_bias(attn_mask) and q.shape[2] > k.shape[2]:
        return "a bottom-right causal mask with more queries than keys leaves rows without keys"
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return "backward is not implemented"
    return None


_Tensor = torch.Tensor


def serve(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, scale: float | None,
          lower_right: bool = False) -> torch.Tensor:
    """The tuned path for a call ``unsupported_reason`` accepted (callers that checked already, such as the
    transformers integration, come here directly): in plain eager mode the served candidate's unchecked runner
    (``dispatch.runner_for``: one dictionary lookup), else the op."""
    if _eager(q, k, v):
        return runner_for(q, k, is_causal, lower_right, v)(q, k, v, scale)
    return torch.ops.flashcore.attention(q, k, v, is_causal, scale, lower_right)


_is_compiling = torch.compiler.is_compiling
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_transforms = torch._C._functorch.peek_interpreter_stack
_tracing = torch._C._get_tracing_state
_profiling = torch.autograd._profiler_enabled


def _eager(q, k, v) -> bool:
    """Whether calling the op's implementation directly is the same as calling the op: plain eager mode with
    plain tensors, nothing that traces, transforms, intercepts or profiles torch calls."""
    return (type(q) is _Tensor and type(k) is _Tensor and type(v) is _Tensor and not _is_compiling()
            and not _dispatch_modes() and not _function_modes() and _transforms() is None and not _tracing()
            and not _profiling())


_sdpa = F.scaled_dot_product_attention


def planned(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, scale: float | None,
            enable_gqa: bool) -> torch.Tensor | None:
    """The op's hot path for a call without mask or dropout, or None where it does not apply (not compiling; a
    call class seen before: ``dispatch.PLANS``, keyed by ``dispatch.plan_key``). Where SDPA's own choice is
    served the call goes to SDPA exactly as made (SDPA's host cost, nothing added but this lookup), where another
    SDPA backend is, to SDPA as made with that backend's switch alone on (``backends.Pinned``); where our kernel
    is, its unchecked runner runs once the call passes the support check, which the class alone does not imply,
    in plain eager mode."""
    if _is_compiling():
        return None
    qs, ks = q.shape, k.shape
    if len(ks) != 4 or len(qs) != 4:
        return None
    s, lq = ks[2], qs[2]
    plan = PLANS.get((qs, ks[1], s if s == lq else -(1 << (s - 1).bit_length()), q.dtype, is_causal))
    if plan is TO_SDPA:
        return _sdpa(q, k, v, None, 0.0, is_causal, scale=scale, enable_gqa=enable_gqa)
    if plan is not None:
        if plan.__class__ is Pinned:
            return plan(q, k, v, is_causal, scale, enable_gqa)
        if _planned_ok(q, k, v, qs, ks, enable_gqa, scale) and _eager(q, k, v):
            return plan(q, k, v, scale)
    return None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask=None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False, *,
              strict: bool = False) -> torch.Tensor:
    """``scaled_dot_product_attention`` with the tuned candidate where supported, SDPA elsewhere.

    ``strict=True`` raises UnsupportedAttention naming what is unsupported instead of falling back.
    """
    if attn_mask is None and not dropout_p and not strict and not _is_compiling():
        # ``planned``, inlined: a Python call frame is a tenth of the host time this path may add to SDPA's
        qs, ks = q.shape, k.shape
        if len(ks) == 4 == len(qs):
            s, lq = ks[2], qs[2]
            plan = PLANS.get((qs, ks[1], s if s == lq else -(1 << (s - 1).bit_length()), q.dtype, is_causal))
            if plan is TO_SDPA:
                return _sdpa(q, k, v, None, 0.0, is_causal, scale=scale, enable_gqa=enable_gqa)
            if plan is not None:
                if plan.__class__ is Pinned:  # SDPA as made, one backend's switch on
                    return plan(q, k, v, is_causal, scale, enable_gqa)
                if _planned_ok(q, k, v, qs, ks, enable_gqa, scale) and _eager(q, k, v):
                    return plan(q, k, v, scale)
    reason = unsupported_reason(q, k, v, attn_mask, dropout_p, enable_gqa, is_causal, scale)
    if reason is None:
        lower_right = False
        if attn_mask is not None:  # a CausalBias (checked above): no mask is materialized
            lower_right = bool(_causal_bias(attn_mask)) and q.shape[2] != k.shape[2]
            is_causal = True
        return serve(q, k, v, bool(is_causal), scale, lower_right)
    if strict:
        raise UnsupportedAttention(reason)
    return _sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                 enable_gqa=enable_gqa)
