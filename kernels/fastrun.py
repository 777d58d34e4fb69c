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

A caller that knows its arguments can key them itself (:meth:`FastRunner.launch` / :meth:`FastRunner.first`,
attention_kv's server): its key must be at least as fine as the ``arg_class`` of every argument (equal keys, equal
classes; :func:`int_classes` is the cheap form for a run of ints), and it passes the tensors of a repeated launch
as their ``data_ptr()`` ints, which Triton's launcher takes as they are (for a tensor it calls ``data_ptr()`` and
checks the address with the driver, ``cuPointerGetAttribute``, which for device memory gives the address back).
:func:`launch_context` reads the device, the stream, the hooks and the knobs once for the launches of one call.
Where the compiled kernel's launcher is Triton's ``CudaLauncher`` and the kernel needs no scratch memory, a repeated
launch calls the launcher's C function with the arguments ``CudaLauncher.__call__`` would pass it (``_direct``).
"""

from __future__ import annotations

import functools
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
_I32_MAX = (1 << 31) - 1
_KEYED = ("keyed",)  # first element of the keys callers build: never an int meta id (the generic keys' first)
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


def int_classes(ints: tuple[int, ...]) -> tuple | None:
    """``arg_class`` of each of ``ints`` (Python ints, at least one) in a cheaper form, or None when one of them is
    not a 32-bit int (then key them by ``arg_class``). Each is 2 for the constant 1, else whether 16 divides it:
    with the width fixed at 32 bits that is ``arg_class``'s class one for one (tests/test_fastrun.py)."""
    if min(ints) < _I32[0] or max(ints) > _I32_MAX:
        return None
    return tuple([2 if x == 1 else not x & 15 for x in ints])


def launch_context() -> tuple | None:
    """What the fast launches of one call share, read once: (device, stream, key prefix of the current device and
    Triton's debug and instrumentation knobs). None while a launch hook is set: Triton's own launch calls it."""
    if not _hooks_clear():
        return None
    drv = driver.active
    device = drv.get_current_device()
    return device, drv.get_current_stream(device), (_KEYED, device, knobs.runtime.debug,
                                                     knobs.compilation.instrumentation_mode)


class _Entry(list):
    """A recorded launch: [launcher, function, packed metadata, constexpr tail, last use] and ``direct``."""

    __slots__ = ("direct",)


@functools.cache
def _direct_types() -> tuple[type, ...]:
    try:
        from triton.backends.nvidia.driver import CudaLauncher
    except ImportError:  # no CUDA backend in this Triton: every launch through the launcher object
        return ()
    return (CudaLauncher,)


def _direct(run) -> tuple | None:
    """(C launch function, cooperative flag, PDL flag) of a CudaLauncher whose kernel needs no global or profile
    scratch memory: its ``__call__`` then calls ``launch(grid, stream, function, cooperative, pdl, None, None,
    *rest)`` and nothing else, so calling that directly is the same launch. None for any other launcher."""
    if type(run) not in _direct_types() or run.global_scratch_size or run.profile_scratch_size:
        return None
    return run.launch, run.launch_cooperative_grid, run.launch_pdl


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
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        _launch(entry, grid[0], g1, g2, drv.get_current_stream(device), args)
        self.hits += 1

    def launch(self, ctx: tuple, key: Any, grid: tuple[int, int, int], args: Sequence[Any]) -> bool:
        """Repeat the launch recorded under the caller's ``key`` with ``args`` (the tensors as their ``data_ptr()``
        ints) in ``ctx`` (``launch_context()`` of this call). False when none is recorded or the fast path is
        off for this function now; the caller then calls :meth:`first` with the tensors themselves."""
        entry = self._cache.get((ctx[2], key))
        if entry is None:
            return False
        fn = self.fn
        if fn.pre_run_hooks or (fn.used_global_vals and _globals_changed(fn)):
            return False
        entry[4] = next(self._clock)
        _launch(entry, grid[0], grid[1], grid[2], ctx[1], args)
        self.hits += 1
        return True

    def first(self, ctx: tuple | None, key: Any, grid: tuple[int, int, int], args: Sequence[Any],
              meta: Mapping[str, Any]) -> None:
        """``fn[grid](*args, **meta)`` through Triton, recorded under ``key`` for :meth:`launch` where the fast
        path is on. ``key`` must be at least as fine as ``arg_class`` of each of ``args`` and the keywords."""
        if ctx is None or not self.enabled or self.fn.pre_run_hooks:
            return self._triton(grid, args, meta)
        self._miss((ctx[2], key), grid, args, meta)

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
        entry = self._cache[key] = _Entry((run, kernel.function, kernel.packed_metadata, tail, next(self._clock)))
        entry.direct = _direct(run)
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


def _launch(entry: _Entry, g0: int, g1: int, g2: int, stream: int, args: Sequence[Any]) -> None:
    run, function, packed, tail, _ = entry
    direct = entry.direct
    try:
        if direct is None:
            run(g0, g1, g2, stream, function, packed, None, None, None, *args, *tail)
        else:
            direct[0](g0, g1, g2, stream, function, direct[1], direct[2], None, None, packed, None, None, None,
                      *args, *tail)
    except Exception:
        with typed_errors():  # the KernelError Triton's own launch would have raised
            raise


def _globals_changed(fn) -> bool:
    """JITFunction.run's check that the globals a compiled kernel used still hold their values."""
    missing = object()
    for (name, _), (val, globals_dict) in fn.used_global_vals.items():
        if globals_dict.get(name, missing) != val:
            return True
    return False
