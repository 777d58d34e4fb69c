"""Backends as candidates: PyTorch's SDPA backends (cuDNN, flash, memory-efficient) and, where the package is
installed, FlashAttention-4's Hopper kernel (``flash_attn.cute``), gated and timed like our own kernels.

A backend has nothing to tune: its one "config" is ``{}``. Its speed (and, as PyTorch's cuDNN path has shown,
its correctness) depends on the torch and library builds, so its cache entries carry a ``fingerprint`` of
them as their kernel hash: an entry won by a backend is served only where those builds match. Importing this
module registers the backends and imports nothing heavy (torch is imported by the launchers).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math

from ._errors import KernelInputError, KernelLaunchError
from ._family import FAMILIES, KernelFamily, register

SDPA_BACKENDS = {"sdpa_cudnn": "CUDNN_ATTENTION", "sdpa_flash": "FLASH_ATTENTION",
                 "sdpa_efficient": "EFFICIENT_ATTENTION"}
FA4 = "fa4"


@functools.cache
def fingerprint(name: str) -> str:
    """16 hex digits naming the builds backend ``name`` runs on: torch (with its CUDA), cuDNN for the cuDNN
    backend, flash-attn-4 for FA4."""
    import torch

    parts = [name, torch.__version__, str(torch.version.cuda)]
    if name == "sdpa_cudnn":
        parts.append(str(torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None))
    if name == FA4:
        from importlib import metadata

        try:
            parts.append(metadata.version("flash-attn-4"))
        except metadata.PackageNotFoundError:
            parts.append("flash_attn.cute")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


_FLAGS = ("flash", "mem_efficient", "math", "cudnn")  # torch's SDPA backend switches, by their _C names
_ONLY = {"sdpa_cudnn": "cudnn", "sdpa_flash": "flash", "sdpa_efficient": "mem_efficient"}


def call_with_only(flag: str, fn):
    """``fn()`` with ``flag`` the only SDPA backend enabled, the switches restored after. The same as
    ``torch.nn.attention.sdpa_kernel([backend])``, at a third of its host time (measured on a CPU: ~10 against
    ~28 µs a call), which matters on a served path that runs every layer of every forward."""
    import torch

    get = [getattr(torch._C, f"_get_{name}_sdp_enabled") for name in _FLAGS]
    put = [getattr(torch._C, f"_set_sdp_use_{name}") for name in _FLAGS]
    before = [g() for g in get]
    for name, setter in zip(_FLAGS, put):
        setter(name == flag)
    try:
        return fn()
    finally:
        for setter, value in zip(put, before):
            setter(value)


def _sdpa(backend: str):
    def launch(q, k, v, config, *, causal=False, sm_scale=None, out=None, lower_right=False):
        import torch.nn.functional as F

        if config:
            raise KernelInputError(f"a backend takes no config; got {sorted(config)}")
        if q.device.type != "cuda":
            raise KernelInputError(f"{backend} needs CUDA tensors")
        mask = None
        if causal and lower_right and q.shape[2] != k.shape[2]:
            from torch.nn.attention.bias import causal_lower_right

            mask = causal_lower_right(q.shape[2], k.shape[2])
        gqa = k.shape[1] != q.shape[1]
        try:
            result = call_with_only(_ONLY[backend], lambda: F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=sm_scale, enable_gqa=gqa))
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise KernelLaunchError(f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]) from exc
        if out is None:
            return result
        return out.copy_(result)

    launch.__name__ = backend
    return launch


def _fa4(q, k, v, config, *, causal=False, sm_scale=None, out=None, lower_right=False):
    """FlashAttention-4 (``flash_attn.cute.flash_attn_func``, (B, S, H, D) layout: views, no copies). Its
    causal mask is bottom-right aligned, so top-left with unequal lengths is refused."""
    if config:
        raise KernelInputError(f"a backend takes no config; got {sorted(config)}")
    if causal and q.shape[2] != k.shape[2] and not lower_right:
        raise KernelInputError("FA4's causal mask is bottom-right aligned (no top-left with unequal lengths)")
    from flash_attn.cute import flash_attn_func

    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    try:
        result = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale,
                                 causal=causal)
    except (RuntimeError, ValueError, TypeError, NotImplementedError, AssertionError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise KernelLaunchError(f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]) from exc
    result = (result[0] if isinstance(result, tuple) else result).transpose(1, 2)
    if out is None:
        return result
    return out.copy_(result)


sdpa_cudnn = _sdpa("sdpa_cudnn")
sdpa_flash = _sdpa("sdpa_flash")
sdpa_efficient = _sdpa("sdpa_efficient")
fa4 = _fa4


def fa4_installed() -> bool:
    """Whether FlashAttention-4's CuTe kernels can be imported here (checked without importing them)."""
    return importlib.util.find_spec("flash_attn") is not None


def _register() -> None:
    for name in SDPA_BACKENDS:
        if name not in FAMILIES:
            register(KernelFamily(name=name, launcher=f"backends:{name}", reference="reference:attention_reference",
                                  space=None, dtypes=("float16", "bfloat16"), kind="backend", lengths="any"))
    if FA4 not in FAMILIES and fa4_installed():
        register(KernelFamily(name=FA4, launcher="backends:fa4", reference="reference:attention_reference",
                              space=None, dtypes=("float16", "bfloat16"), kind="backend", lengths="any",
                              min_cc="9.0"))


_register()
