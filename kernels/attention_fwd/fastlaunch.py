"""Fast launches of ``attn_fwd``: the launch Triton would make, without re-deriving it at every call.

``kernels.attention_fwd.launch.attention_fwd`` checks the inputs and the config, rebuilds the ~36 kernel
arguments and lets Triton 3.6's ``JITFunction.run`` bind and specialise them and compute its cache key at every
call: tens of µs of host time for a kernel that runs in ~10 µs at small shapes. ``FastLauncher`` runs that normal launcher
on the first call of each *launch signature* (``signature_key``: the config, causal, sm_scale, the current
device, q/k/v shapes, strides, dtypes, devices and 16-byte alignment, Triton's debug and instrumentation
knobs), then records what it launched: the CompiledKernel (``attn_fwd.warmup`` with the very arguments
``kernels.attention_fwd.launch._kernel_args`` builds: a hit in Triton's own kernel cache), the grid and the bound
argument values. A later call with the same signature allocates ``out`` as the normal launcher does and makes the call
``JITFunction.run`` makes::

    kernel.run(grid0, grid1, grid2, stream, kernel.function, kernel.packed_metadata, launch_metadata,
               launch_enter_hook, launch_exit_hook, *bound_args.values())

with this call's q, k, v, out in the tensor slots (Triton's launcher reads their ``data_ptr()``), the current
stream of the current device (as Triton picks them) and None for the hooks and launch_metadata: Triton 3.6
passes its hook chains (``knobs.runtime.launch_enter_hook``/``launch_exit_hook``, HookChain objects) and a
LazyDict that only those hooks read; the fast path runs only while both chains are empty (or None), where
calling them does nothing. Everything else in the arguments is a function of the signature, so the launch is
the same kernel with the same arguments and the output is bit-identical.

Falls back to ``kernels.attention_fwd.launch.attention_fwd`` unchanged (counted in ``fallbacks``) where it cannot prove
that: a Triton other than 3.6.x, Triton's interpreter (``attn_fwd`` is not a JITFunction), LOADS other than
"pointer" (descriptors and scratch are per-launch work), PERSISTENT (its grid follows occupancy learnt at run
time), a config check_config rejects or that cannot be hashed, a Triton launch hook registered (a non-empty
HookChain, or any other callable) or ``attn_fwd.pre_run_hooks`` set, an sm_scale that is neither None nor a
non-zero float (0.0 and -0.0 would share a key), a kernel global changed since compiling (Triton raises; the normal path does too), an ``out`` not
16-byte aligned. The signatures live in one LRU of ``MAX_ENTRIES`` across launchers.

The config is frozen when the launcher is made: mutate a TunedKernel's ``.config`` in place and the fast path
keeps launching the old one (nothing in FlashCore does).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping
from typing import Any

import torch
import triton
from triton import knobs
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

from . import launch as _launch
from .._common import typed_errors
from .._errors import KernelError, KernelInputError
from .kernel import attn_fwd, attn_fwd_gqa

try:
    from triton.knobs import HookChain
except ImportError:  # another Triton: ENABLED is False anyway
    HookChain = None

MAX_ENTRIES = 256
# The launch below is Triton 3.6's JITFunction.run; another Triton (whose run may differ) gets the normal launcher.
# False too under TRITON_INTERPRET=1 (attn_fwd is then an InterpretedFunction).
ENABLED = isinstance(attn_fwd, JITFunction) and triton.__version__.startswith("3.6.") and HookChain is not None
# what JITFunction binds (its .signature), per kernel (attn_fwd_gqa for grouped-query heads)
_SIGNATURES = {fn: inspect.signature(fn.fn) for fn in (attn_fwd, attn_fwd_gqa)}

# signature -> [run, function, packed_metadata, grid0, grid1, args after the tensors, last use]. The last use
# is a tick of _CLOCK, set on every hit (cheaper than reordering the dict); the least recently used entry is
# looked for only when a new one would go past MAX_ENTRIES (on a miss, which also compiled or launched).
_CACHE: dict[tuple, list] = {}
_CLOCK = itertools.count()
_CONFIG_IDS: dict[tuple, int] = {}  # config items -> config_key (configs are few: never evicted)
_MISSING = object()
_CONTIGUOUS = torch.contiguous_format


def signature_key(config_key: int, causal: bool, sm_scale: float | None, device: int,
                  q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple:
    """Everything that decides the compiled kernel, the grid and the non-tensor arguments of a launch.

    ``device`` is the current device (Triton compiles and launches for it, whatever the tensors' device).
    Triton specialises pointers on 16-byte alignment, ints on their value (shape and strides are here), and
    its options on knobs.runtime.debug and knobs.compilation.instrumentation_mode.
    """
    return (config_key, causal, sm_scale, device, q.shape, k.shape, v.shape, q.stride(), k.stride(), v.stride(),
            q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
            q.data_ptr() % 16 == 0, k.data_ptr() % 16 == 0, v.data_ptr() % 16 == 0,
            knobs.runtime.debug, knobs.compilation.instrumentation_mode)


def config_key(config: Mapping[str, Any]) -> int | None:
    """A small int naming a config the fast path can take (pointer loads, not persistent; equal configs get
    the same int), else None."""
    try:
        _launch.check_config(config)
    except KernelInputError:
        return None
    if config.get("LOADS", "pointer") != "pointer" or config.get("PERSISTENT", False):
        return None
    key = tuple(sorted(config.items()))
    try:
        return _CONFIG_IDS.setdefault(key, len(_CONFIG_IDS))
    except TypeError:  # an unhashable value
        return None


class FastLauncher:
    """``launcher(q, k, v, sm_scale=None) -> out`` for one config and causal flag; same result as
    ``kernels.attention_fwd.launch.attention_fwd(q, k, v, config, causal=causal, sm_scale=sm_scale)``.

    ``hits`` counts fast launches, ``misses`` first calls of a signature (run by the normal launcher and
    recorded), ``fallbacks`` calls the fast path did not take.
    """

    __slots__ = ("config", "causal", "hits", "misses", "fallbacks", "_key")

    def __init__(self, config: Mapping[str, Any], causal: bool = False):
        self.config = config
        self.causal = bool(causal)
        self.hits = self.misses = self.fallbacks = 0
        self._key = config_key(config) if ENABLED else None

    @property
    def fast(self) -> bool:
        """Whether this launcher's config can take the fast path at all (in this process)."""
        return self._key is not None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None):
        enter, exit_ = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
        kernel = attn_fwd if k.shape[1] == q.shape[1] else attn_fwd_gqa
        if (self._key is None or kernel.pre_run_hooks
                or (enter is not None and (type(enter) is not HookChain or enter.calls))
                or (exit_ is not None and (type(exit_) is not HookChain or exit_.calls))
                or (sm_scale is not None and (type(sm_scale) is not float or not sm_scale))):
            return self._normal(q, k, v, sm_scale)
        drv = driver.active
        device = drv.get_current_device()
        key = signature_key(self._key, self.causal, sm_scale, device, q, k, v)
        entry = _CACHE.get(key)
        if entry is None:
            return self._miss(key, q, k, v, sm_scale)
        entry[6] = next(_CLOCK)
        out = torch.empty_like(q, memory_format=_CONTIGUOUS)
        if out.data_ptr() % 16 or (kernel.used_global_vals and _globals_changed(kernel)):
            return self._normal(q, k, v, sm_scale, out)
        run, function, packed_metadata, grid0, grid1, tail, _ = entry
        try:
            run(grid0, grid1, 1, drv.get_current_stream(device), function, packed_metadata, None, None, None,
                q, k, v, out, *tail)
        except Exception:
            with typed_errors():  # the same KernelError the normal launcher would raise
                raise
        self.hits += 1
        return out

    def _normal(self, q, k, v, sm_scale, out=None):
        self.fallbacks += 1
        return _launch.attention_fwd(q, k, v, self.config, causal=self.causal, sm_scale=sm_scale, out=out)

    def _miss(self, key, q, k, v, sm_scale):
        self.misses += 1
        out = _launch.attention_fwd(q, k, v, self.config, causal=self.causal, sm_scale=sm_scale)
        try:
            entry = launch_entry(q, k, v, out, self.config, self.causal, sm_scale)
        except KernelError:  # the launch itself worked: serve its output, record nothing
            entry = None
        if entry is not None:
            remember(key, entry)
        return out

    def __repr__(self) -> str:
        return (f"FastLauncher(fast={self.fast}, hits={self.hits}, misses={self.misses}, "
                f"fallbacks={self.fallbacks})")


def launch_entry(q, k, v, out, config, causal, sm_scale) -> list | None:
    """[run, function, packed_metadata, grid0, grid1, args after the 4 tensors, last use] of the launch the
    normal launcher just made with these tensors, or None where the fast path cannot repeat it."""
    if out.data_ptr() % 16:  # the kernel was specialised for an unaligned out: do not reuse it
        return None
    grid, args, kwargs = _launch._kernel_args(q, k, v, out, config, causal, sm_scale)
    if kwargs["LOADS"] != "pointer" or kwargs.get("PERSISTENT") or len(grid) != 2:
        return None
    if any(a is not t for a, t in zip(args, (q, k, v, out))):
        return None
    fn = _launch.kernel_for(q, k)
    kernel = compiled_kernel(fn, args, grid, kwargs)
    if kernel is None:
        return None
    names = set(fn.arg_names)
    bound = _SIGNATURES[fn].bind(*args, **{n: val for n, val in kwargs.items() if n in names})
    bound.apply_defaults()
    values = tuple(bound.arguments.values())
    run = kernel.run  # the property loads the binary (_init_handles) and sets kernel.function
    return [run, kernel.function, kernel.packed_metadata, grid[0], grid[1], values[4:], next(_CLOCK)]


def compiled_kernel(fn, args, grid, kwargs):
    """The CompiledKernel Triton launches for these arguments (from its cache: the normal launch compiled it)."""
    with typed_errors():
        kernel = fn.warmup(*args, grid=grid, **kwargs)
    if kernel is not None and hasattr(kernel, "result"):  # a future under Triton's async compile mode
        kernel = kernel.result()
    return kernel


def remember(key: tuple, entry: list) -> None:
    """Store a signature's launch (``entry[-1]``: its last use), evicting the least recently used ones
    beyond MAX_ENTRIES."""
    entry[-1] = next(_CLOCK)
    _CACHE[key] = entry
    while len(_CACHE) > MAX_ENTRIES:
        oldest = min(list(_CACHE.items()), key=lambda item: item[1][-1])[0]
        _CACHE.pop(oldest, None)


def cached_signatures() -> list[tuple]:
    """The cached signatures, least recently used first."""
    return [key for key, _ in sorted(list(_CACHE.items()), key=lambda item: item[1][-1])]


def cache_size() -> int:
    return len(_CACHE)


def clear_cache() -> None:
    _CACHE.clear()


def _globals_changed(kernel) -> bool:
    """JITFunction.run's check that the globals a compiled kernel used still hold their values."""
    for (name, _), (val, globals_dict) in kernel.used_global_vals.items():
        if globals_dict.get(name, _MISSING) != val:
            return True
    return False
