"""Repeat a Triton JIT launch without Triton's per-call work: the launch path of every served family.

``JITFunction.run`` (Triton 3.6) binds the arguments, builds a cache key from their specialization and the
options (a ``str`` of the options dict), checks hooks and globals, then calls the compiled kernel's launcher:
tens of µs of host time for a decode kernel that runs in a few. :class:`FastRunner` keeps, per JIT function,
the compiled kernels it has launched under a key that is at least as fine as Triton's: for every positional
argument its specialization class (:func:`arg_class`: a tensor by dtype and 16-byte alignment, an int as the
constant 1, else by Triton's integer type and divisibility by 16, a float, a bool, None, a host tensor
descriptor by dtype, box and the identity of its shared-memory layout object), the constexpr and
option keywords (one small id per distinct set), the current device and Triton's debug and instrumentation
knobs. Two launches with one key compile to the same kernel in Triton too, so repeating the launch with this
call's arguments is the call ``JITFunction.run`` would make::

    kernel.run(grid0, grid1, grid2, stream, kernel.function, kernel.packed_metadata, None, None, None,
               *positional, *constexpr values in signature order)

The first launch of a key goes through Triton's own ``fn[grid](...)`` (which compiles if needed), then the
compiled kernel is fetched with ``fn.warmup`` (a hit in Triton's cache). Falls back to ``fn[grid](...)``
(counted in ``fallbacks``) where it cannot prove the launch is the same: another Triton than 3.6.x, the
interpreter (the function is not a JITFunction), a launch hook or pre-run hook set, a changed kernel global,
keywords that are not hashable. Keys live in one LRU of ``MAX_ENTRIES`` per runner.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import triton
from triton import knobs
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

from ._common import typed_errors

try:
    from triton.knobs import HookChain
except ImportError:  # another Triton: never fast
    HookChain = None

MAX_ENTRIES = 512
SUPPORTED = triton.__version__.startswith("3.6.") and HookChain is not None
_I32 = (-(1 << 31), 1 << 31)
_I64_END = 1 << 63
_Tensor = torch.Tensor


def arg_class(arg: Any) -> Any:
    """Triton 3.6's specialization class of one launch argument (``native_specialize_impl`` with value and
    alignment specialization on), or a finer one."""
    kind = type(arg)
    if kind is int:
        if arg == 1:
            return 1
        width = 32 if _I32[0] <= arg < _I32[1] else 64 if -_I64_END <= arg < _I64_END else 65
        return (width, arg % 16 == 0)
    if kind is bool or kind is float or arg is None:
        return kind
    if isinstance(arg, _Tensor):
        return (arg.dtype, arg.data_ptr() % 16 == 0)
    block = getattr(arg, "block_shape", None)
    if block is not None:  # a host tensor descriptor: Triton specializes it on dtype, box and shared layout
        layout = getattr(arg, "layout", None)
        return (kind, arg.base.dtype, tuple(block), None if layout is None else id(layout))
    return (kind, arg)  # anything else: its value (never seen from our launchers)


def _hooks_clear() -> bool:
    enter, exit_ = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    return ((enter is None or (type(enter) is HookChain and not enter.calls))
            and (exit_ is None or (type(exit_) is HookChain and not exit_.calls)))


class FastRunner:
    """``runner(grid, args, meta)``: launch JIT function ``fn`` as ``fn[grid](*args, **meta)`` would.

    ``args`` are the kernel's leading positional parameters; ``meta`` maps the remaining parameters (constexprs)
    and Triton's options (num_warps, num_stages) to values. ``hits`` counts fast launches, ``misses`` first
    launches of a key, ``fallbacks`` launches through Triton's own path for another reason.
    """

    def __init__(self, fn):
        self.fn = fn
        self.enabled = SUPPORTED and isinstance(fn, JITFunction)
        self.hits = self.misses = self.fallbacks = 0
        self._cache: dict[tuple, list] = {}
        self._meta_ids: dict[tuple, int] = {}
        self._clock = itertools.count()
        self._params = list(fn.arg_names) if self.enabled else []

    def meta_id(self, meta: Mapping[str, Any]) -> int | None:
        """A small int for one set of keywords (equal sets, equal ids), None if it cannot be hashed."""
        items = tuple(sorted(meta.items()))
        try:
            return self._meta_ids.setdefault(items, len(self._meta_ids))
        except TypeError:
            return None

    def __call__(self, grid: Sequence[int], args: Sequence[Any], meta: Mapping[str, Any],
                 meta_id: int | None = None) -> None:
        fn = self.fn
        if not self.enabled or fn.pre_run_hooks or not _hooks_clear():
            return self._triton(grid, args, meta)
        if meta_id is None:
            meta_id = self.meta_id(meta)
            if meta_id is None:
                return self._triton(grid, args, meta)
        drv = driver.active
        device = drv.get_current_device()
        key = (meta_id, device, knobs.runtime.debug, knobs.compilation.instrumentation_mode,
               *map(arg_class, args))
        entry = self._cache.get(key)
        if entry is None:
            return self._miss(key, grid, args, meta)
        if fn.used_global_vals and _globals_changed(fn):
            return self._triton(grid, args, meta)
        entry[4] = next(self._clock)
        run, function, packed, tail, _ = entry
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        try:
            run(grid[0], g1, g2, drv.get_current_stream(device), function, packed, None, None, None, *args, *tail)
        except Exception:
            with typed_errors():  # the KernelError Triton's own launch would have raised
                raise
        self.hits += 1

    def _triton(self, grid, args, meta) -> None:
        self.fallbacks += 1
        with typed_errors():
            self.fn[tuple(grid)](*args, **meta)

    def _miss(self, key, grid, args, meta) -> None:
        self.misses += 1
        with typed_errors():
            self.fn[tuple(grid)](*args, **meta)
            kernel = self.fn.warmup(*args, grid=tuple(grid), **meta)
        if kernel is not None and hasattr(kernel, "result"):  # a future under Triton's async compile mode
            kernel = kernel.result()
        tail = self._tail(len(args), meta)
        if kernel is None or tail is None:
            return
        run = kernel.run  # the property loads the binary and sets kernel.function
        self._cache[key] = [run, kernel.function, kernel.packed_metadata, tail, next(self._clock)]
        while len(self._cache) > MAX_ENTRIES:
            oldest = min(self._cache.items(), key=lambda item: item[1][-1])[0]
            del self._cache[oldest]

    def _tail(self, n_args: int, meta: Mapping[str, Any]) -> tuple | None:
        """The values of the parameters after the positional ones, in signature order (None if ``meta`` does
        not give each of them: then the launch is not repeated)."""
        rest = self._params[n_args:]
        if any(name not in meta for name in rest):
            return None
        return tuple(meta[name] for name in rest)

    def clear(self) -> None:
        self._cache.clear()

    def __repr__(self) -> str:
        return f"FastRunner({self.fn.__name__}, hits={self.hits}, misses={self.misses}, fallbacks={self.fallbacks})"


def _globals_changed(fn) -> bool:
    """JITFunction.run's check that the globals a compiled kernel used still hold their values."""
    missing = object()
    for (name, _), (val, globals_dict) in fn.used_global_vals.items():
        if globals_dict.get(name, missing) != val:
            return True
    return False
