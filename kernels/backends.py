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

from flashcore.cache import HALF_DTYPES

from ._errors import KernelInputError, KernelLaunchError
from ._family import FAMILIES, KernelFamily, register

SDPA_BACKENDS = {"sdpa_cudnn": "CUDNN_ATTENTION", "sdpa_flash": "FLASH_ATTENTION",
                 "sdpa_efficient": "EFFICIENT_ATTENTION"}
FA4 = "fa4"
# SDPA as the user calls it (its own backend choice, no switch touched): what get_kernel serves where nothing
# tuned applies. Never a sweep candidate: it is the baseline the others are measured against.
SDPA = "sdpa"


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


def sdpa(q, k, v, config, *, causal=False, sm_scale=None, out=None, lower_right=False):
    """``F.scaled_dot_product_attention`` as a user calls it: SDPA picks its backend (any device)."""
    if config:
        raise KernelInputError(f"a backend takes no config; got {sorted(config)}")
    result = BackendServer(None, causal, lower_right)(q, k, v, sm_scale)
    return result if out is None else out.copy_(result)


class BackendServer:
    """What get_kernel serves for a backend: ``server(q, k, v, sm_scale=None) -> out``, SDPA with only the
    backend's switch on (``flag``; None: SDPA's own choice), with as little host work as the call allows (the
    switches are read and set through torch._C's getters and setters, no context manager). A backend that
    refuses the call (a shape outside the one it was gated at) or that the user switched off
    (``torch.nn.attention.sdpa_kernel`` without it) leaves the call to SDPA as made."""

    __slots__ = ("flags", "causal", "lower_right", "_at", "_sdpa", "_get", "_pin", "_choice", "_own_choice")

    def __init__(self, flag: str | None, causal: bool, lower_right: bool = False):
        import torch.nn.functional as F

        self.flags = None if flag is None else tuple(name == flag for name in _FLAGS)
        self._at = None if flag is None else _FLAGS.index(flag)
        self.causal = bool(causal)
        self.lower_right = bool(lower_right)
        self._sdpa = F.scaled_dot_product_attention
        self._get = _switches()[0]
        self._pin = None if flag is None else Pinned(flag)  # the switch protocol, shared with the op's hot path
        # SDPA's own pick (torch._fused_sdp_choice, an SDPBackend value) per call class: where it is this backend
        # already, the plain call is the same launch without reading and setting the switches
        self._choice = None if flag is None else _SDP_CHOICE.get(flag)
        self._own_choice: dict[tuple, bool] = {}

    def picked_by_sdpa(self, q, k, v, sm_scale=None) -> bool:
        """Whether SDPA, called without a mask and with the switches as they are now, picks this server's backend
        for these tensors itself (``torch._fused_sdp_choice``): then the plain call is the same launch."""
        if self._choice is None:
            return False
        return int(_fused_choice(q, k, v, None, 0.0, self.causal, scale=sm_scale,
                                 enable_gqa=k.shape[1] != q.shape[1])) == self._choice

    def pinned(self) -> Pinned | None:
        """This server's plan for the drop-in op's hot path (None for SDPA's own choice or a CausalBias server)."""
        return None if self.lower_right else self._pin

    @property
    def passthrough(self) -> bool:
        """Whether this server is SDPA's own choice (no switch touched): a call can go to SDPA as it was made."""
        return self.flags is None

    def __call__(self, q, k, v, sm_scale=None):
        mask, causal = None, self.causal
        if self.lower_right and causal and q.shape[2] != k.shape[2]:
            from torch.nn.attention.bias import causal_lower_right

            mask, causal = causal_lower_right(q.shape[2], k.shape[2]), False
        gqa = k.shape[1] != q.shape[1]
        if self.flags is None:
            return self._sdpa(q, k, v, attn_mask=mask, is_causal=causal, scale=sm_scale, enable_gqa=gqa)
        if self._choice is not None and mask is None:
            before = tuple(g() for g in self._get)
            if before[self._at]:  # (switched off by the user: the pin leaves the call to SDPA as made)
                # the class of the call: everything SDPA's pick depends on but the kv length (a decode step's
                # cache grows every call; a pick that changed with it would still be a correct SDPA backend)
                key = (q.shape, q.stride(), k.shape[1], k.stride(-1), v.stride(-1), q.dtype, causal, *before)
                mine = self._own_choice.get(key)
                if mine is None:
                    mine = self._own_choice[key] = self.picked_by_sdpa(q, k, v, sm_scale)
                if mine:
                    return self._sdpa(q, k, v, is_causal=causal, scale=sm_scale, enable_gqa=gqa)
        return self._pin(q, k, v, causal, sm_scale, gqa, mask)


class Pinned:
    """The drop-in op's plan (``dispatch.PLANS``) for a call class served by an SDPA backend that SDPA does not
    pick itself there, and BackendServer's switch protocol: ``plan(q, k, v, is_causal, scale, enable_gqa,
    attn_mask=None)`` is SDPA called as the user called it with only that backend's switch on while it runs
    (four switches read, set and restored: no per-call class key, no input check, nothing but the switches added
    to SDPA's host work). Where the user switched the backend off
    (``torch.nn.attention.sdpa_kernel`` without it) or it refuses the inputs, SDPA as called."""

    __slots__ = ("_flags", "_at", "_get", "_put", "_sdpa", "_oom")

    def __init__(self, flag: str):
        import torch
        import torch.nn.functional as F

        self._flags = tuple(name == flag for name in _FLAGS)
        self._at = _FLAGS.index(flag)
        self._get, self._put = _switches()
        self._sdpa = F.scaled_dot_product_attention
        self._oom = torch.cuda.OutOfMemoryError

    def __call__(self, q, k, v, is_causal, scale, enable_gqa, attn_mask=None):
        g0, g1, g2, g3 = self._get
        before = (g0(), g1(), g2(), g3())
        sdpa = self._sdpa
        if not before[self._at]:
            return sdpa(q, k, v, attn_mask, 0.0, is_causal, scale=scale, enable_gqa=enable_gqa)
        p0, p1, p2, p3 = self._put
        f0, f1, f2, f3 = self._flags
        p0(f0), p1(f1), p2(f2), p3(f3)
        try:
            return sdpa(q, k, v, attn_mask, 0.0, is_causal, scale=scale, enable_gqa=enable_gqa)
        except RuntimeError as exc:  # the backend refuses these inputs (on the host, before any launch)
            if isinstance(exc, self._oom):
                raise
        finally:
            p0(before[0]), p1(before[1]), p2(before[2]), p3(before[3])
        return sdpa(q, k, v, attn_mask, 0.0, is_causal, scale=scale, enable_gqa=enable_gqa)


def as_sdpa_choice(run, q, k, v):
    """``run``, or SDPA's own choice where ``run`` is a BackendServer whose backend SDPA picks itself for this
    call (``torch._fused_sdp_choice`` over the call's tensors and the switches as they are now): the same launch
    without reading or setting a switch. Anything else is returned as it is."""
    if type(run) is not BackendServer or run.flags is None or not q.is_cuda:
        return run
    if run.lower_right and q.shape[2] != k.shape[2]:  # a CausalBias call: SDPA's pick is not asked for
        return run
    return BackendServer(None, run.causal, run.lower_right) if run.picked_by_sdpa(q, k, v) else run


_SDP_CHOICE = {"math": 0, "flash": 1, "mem_efficient": 2, "cudnn": 3}  # torch.nn.attention.SDPBackend values


def _fused_choice(*args, **kwargs):
    import torch

    return torch._fused_sdp_choice(*args, **kwargs)


@functools.cache
def _switches():
    """torch's SDPA backend getters and setters, in _FLAGS order (looked up once)."""
    import torch

    return (tuple(getattr(torch._C, f"_get_{name}_sdp_enabled") for name in _FLAGS),
            tuple(getattr(torch._C, f"_set_sdp_use_{name}") for name in _FLAGS))


def server(name: str):
    """The server factory of backend ``name`` (``KernelFamily.server``): ``factory(config, causal,
    lower_right) -> BackendServer``."""
    flag = _ONLY.get(name)

    def factory(config, causal, lower_right=False):
        if config:
            raise KernelInputError(f"a backend takes no config; got {sorted(config)}")
        return BackendServer(flag, causal, lower_right)

    return factory


sdpa_cudnn = _sdpa("sdpa_cudnn")
sdpa_flash = _sdpa("sdpa_flash")
sdpa_efficient = _sdpa("sdpa_efficient")
fa4 = _fa4


def fa4_installed() -> bool:
    """Whether FlashAttention-4's CuTe kernels can be imported here (checked without importing them)."""
    return importlib.util.find_spec("flash_attn") is not None


sdpa_cudnn_server = server("sdpa_cudnn")
sdpa_flash_server = server("sdpa_flash")
sdpa_efficient_server = server("sdpa_efficient")
sdpa_server = server(SDPA)


def _register() -> None:
    for name in SDPA_BACKENDS:
        if name not in FAMILIES:
            register(KernelFamily(name=name, launcher=f"backends:{name}", reference="reference:attention_reference",
                                  space=None, dtypes=HALF_DTYPES, kind="backend", lengths="any",
                                  server=f"backends:{name}_server"))
    if SDPA not in FAMILIES:
        register(KernelFamily(name=SDPA, launcher="backends:sdpa", reference="reference:attention_reference",
                              space=None, dtypes=HALF_DTYPES, kind="backend", lengths="any",
                              server="backends:sdpa_server", candidate=False))
    if FA4 not in FAMILIES and fa4_installed():
        register(KernelFamily(name=FA4, launcher="backends:fa4", reference="reference:attention_reference",
                              space=None, dtypes=HALF_DTYPES, kind="backend", lengths="any",
                              needs=("tma", "warp_specialize")))  # sm_90 and newer


_register()
