"""kernels/fastrun.py without a GPU: ``int_classes`` against ``arg_class`` and Triton's own specialization, the
direct launch against ``CudaLauncher.__call__``, the keyed entry points (``launch`` / ``first``) with a stand-in
JIT function and launcher, and the globals check. (The real launches are in tests/test_gpu_serving.py.)"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from triton import knobs
from triton.backends.nvidia.driver import CudaLauncher
from triton.knobs import HookChain

from flashcore.kernels import KernelLaunchError
from flashcore.kernels import fastrun
from flashcore.kernels.fastrun import FastRunner, _direct, _Entry, _globals_changed, _launch, arg_class, int_classes

I32 = 1 << 31


def some_ints(rng: random.Random, n: int, wide: bool) -> tuple[int, ...]:
    """Ints of every class: 1, 0, small, multiples of 16, negatives, the int32 edges and (``wide``) past them."""
    pool = [1, 0, 2, 15, 16, 17, 48, -1, -16, -17, I32 - 16, I32 - 1, -I32, -I32 + 16, 4096, 2300, 2299]
    if wide:
        pool += [I32, I32 + 16, -I32 - 1, -I32 - 16, 1 << 40, (1 << 63) - 16, 1 << 63]
    return tuple(rng.choice(pool) if rng.random() < 0.7 else rng.randrange(-4 * I32, 4 * I32) * (16 ** rng.randrange(3))
                 for _ in range(n))


def test_int_classes_are_arg_class_one_for_one_and_none_past_32_bits():
    rng = random.Random(0)
    by_fast: dict = {}
    by_generic: dict = {}
    for _ in range(20000):
        ints = some_ints(rng, rng.randrange(1, 7), wide=rng.random() < 0.3)
        fast, generic = int_classes(ints), tuple(map(arg_class, ints))
        if fast is None:
            assert any(not -I32 <= x < I32 for x in ints), ints
            continue
        assert all(-I32 <= x < I32 for x in ints)
        by_fast.setdefault(fast, set()).add(generic)
        by_generic.setdefault(generic, set()).add(fast)
    # equal fast keys, equal classes (as fine as arg_class); equal classes, equal fast keys (no finer: no extra misses)
    assert all(len(g) == 1 for g in by_fast.values()) and all(len(f) == 1 for f in by_generic.values())
    assert len(by_fast) > 100


def test_int_classes_follow_tritons_own_specialization():
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    rng = random.Random(1)
    seen: dict = {}
    for x in some_ints(rng, 3000, wide=True):
        ours = int_classes((x,))  # None past 32 bits: those are keyed by arg_class
        if ours is not None:
            seen.setdefault(ours, set()).add(native_specialize_impl(BaseBackend, x, False, True, True))
    assert len(seen) == 3 and all(len(theirs) == 1 for theirs in seen.values()), seen


def test_a_planted_coarse_key_is_caught(monkeypatch):
    """The check above fails for a key that forgets the constant 1 (a plant: it must not pass)."""
    monkeypatch.setattr(fastrun, "int_classes",
                        lambda ints: None if min(ints) < -I32 or max(ints) >= I32 else tuple(not x & 15 for x in ints))
    monkeypatch.setitem(globals(), "int_classes", fastrun.int_classes)
    with pytest.raises(AssertionError):
        test_int_classes_are_arg_class_one_for_one_and_none_past_32_bits()


# --- the direct launch ---------------------------------------------------------------------------------

def cuda_launcher(calls: list, scratch: int = 0, profile: int = 0) -> CudaLauncher:
    """A real CudaLauncher (its own __call__) around a recording C launch function."""
    run = object.__new__(CudaLauncher)
    run.launch = lambda *args: calls.append(args)
    run.num_ctas, run.global_scratch_size, run.global_scratch_align = 1, scratch, 1
    run.profile_scratch_size, run.profile_scratch_align = profile, 1
    run.launch_cooperative_grid, run.launch_pdl = True, False
    return run


def test_the_direct_launch_is_the_call_cuda_launcher_makes():
    theirs, ours = [], []
    args = (object(), 7, 0.5, 2**40)
    tail = (64, True)
    CudaLauncher.__call__(cuda_launcher(theirs), 3, 2, 1, 1234, "function", "packed", None, None, None, *args, *tail)
    entry = _Entry((cuda_launcher(ours), "function", "packed", tail, 0))
    entry.direct = _direct(entry[0])
    assert entry.direct is not None
    _launch(entry, 3, 2, 1, 1234, args)
    assert ours == theirs and len(ours) == 1
    # scratch memory to allocate, or another launcher: no direct call
    assert _direct(cuda_launcher([], scratch=128)) is None and _direct(cuda_launcher([], profile=64)) is None
    assert _direct(lambda *a: None) is None


# --- the keyed entry points ------------------------------------------------------------------------------

class FakeFn:
    """Stands for a JITFunction: ``fn[grid](*args, **meta)`` and ``warmup`` record; the compiled kernel's launcher
    is a CudaLauncher (``direct``) or a plain callable that records."""

    arg_names = ["x_ptr", "n", "BLOCK"]
    __name__ = "fake"

    def __init__(self, direct: bool):
        self.direct, self.triton_calls, self.launches = direct, [], []
        self.pre_run_hooks, self.used_global_vals = [], {}

    def __getitem__(self, grid):
        return lambda *args, **meta: self.triton_calls.append((grid, args, meta))

    def warmup(self, *args, grid, **meta):
        if self.direct:
            run = cuda_launcher(self.launches)
        else:
            run = lambda *a: self.launches.append(a)  # noqa: E731
        return SimpleNamespace(run=run, function="function", packed_metadata="packed")


def runner(direct: bool) -> FastRunner:
    r = FastRunner(FakeFn(direct))
    r.enabled, r._params = True, list(r.fn.arg_names)
    return r


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "launcher"])
def test_first_records_and_launch_repeats_with_pointer_ints(direct, monkeypatch):
    monkeypatch.setattr(fastrun, "driver", SimpleNamespace(active=SimpleNamespace(
        get_current_device=lambda: 0, get_current_stream=lambda device: 1234)))
    r = runner(direct)
    ctx = fastrun.launch_context()
    assert ctx[:2] == (0, 1234)
    assert not r.launch(ctx, "key", (4, 1, 1), (4096, 17))
    r.first(ctx, "key", (4, 1, 1), ("tensor", 17), {"BLOCK": 64, "num_warps": 4})
    assert (r.misses, r.hits) == (1, 0) and r.fn.triton_calls == [((4, 1, 1), ("tensor", 17), {"BLOCK": 64, "num_warps": 4})]
    assert r.launch(ctx, "key", (5, 2, 3), (8192, 33)) and r.hits == 1
    prefix = (5, 2, 3, 1234, "function", True, False, None, None) if direct else (5, 2, 3, 1234, "function")
    assert r.fn.launches == [(*prefix, "packed", None, None, None, 8192, 33, 64)]
    assert not r.launch(ctx, "other key", (5, 2, 3), (8192, 33))
    # a pre-run hook or a changed kernel global: not repeated; first then goes through Triton unrecorded
    r.fn.pre_run_hooks.append(lambda *a, **kw: None)
    assert not r.launch(ctx, "key", (5, 2, 3), (8192, 33))
    r.first(ctx, "key", (5, 2, 3), ("tensor", 33), {"BLOCK": 64, "num_warps": 4})
    assert (r.misses, r.fallbacks) == (1, 1)
    r.fn.pre_run_hooks.clear()
    r.fn.used_global_vals = {("G", 0): (1, {"G": 2})}
    assert not r.launch(ctx, "key", (5, 2, 3), (8192, 33))
    assert r.hits == 1 and len(r.fn.launches) == 1
    # the debug knob is part of the context: another value, another key
    monkeypatch.setattr(knobs.runtime, "debug", not knobs.runtime.debug)
    r.fn.used_global_vals = {}
    assert not r.launch(fastrun.launch_context(), "key", (5, 2, 3), (8192, 33))


def test_a_launch_hook_turns_the_keyed_path_off_and_failures_are_typed(monkeypatch):
    monkeypatch.setattr(fastrun, "driver", SimpleNamespace(active=SimpleNamespace(
        get_current_device=lambda: 0, get_current_stream=lambda device: 1234)))
    chain = HookChain()
    chain.add(lambda *a: None)
    with monkeypatch.context() as m:
        m.setattr(knobs.runtime, "launch_enter_hook", chain)
        assert fastrun.launch_context() is None
        r = runner(True)
        r.first(None, "key", (1, 1, 1), ("tensor", 1), {"BLOCK": 16})
        assert (r.misses, r.fallbacks) == (0, 1)
    r = runner(False)
    ctx = fastrun.launch_context()
    r.first(ctx, "key", (1, 1, 1), ("tensor", 3), {"BLOCK": 16})

    def fail(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    r._cache[(ctx[2], "key")][0] = fail
    with pytest.raises(KernelLaunchError, match="illegal memory access"):
        r.launch(ctx, "key", (1, 1, 1), (4096, 3))


def test_keyed_and_generic_keys_share_one_bounded_lru(monkeypatch):
    monkeypatch.setattr(fastrun, "MAX_ENTRIES", 3)
    monkeypatch.setattr(fastrun, "driver", SimpleNamespace(active=SimpleNamespace(
        get_current_device=lambda: 0, get_current_stream=lambda device: 1234)))
    r = runner(False)
    ctx = fastrun.launch_context()
    for i in range(3):
        r.first(ctx, i, (1, 1, 1), ("tensor", 3), {"BLOCK": 16})
    assert r.launch(ctx, 0, (1, 1, 1), (1, 3))  # 0 used again: 1 is the oldest
    r((1,), (5, 3), {"BLOCK": 16})  # a generic key (ints only) joins the same cache
    assert len(r._cache) == 3 and not r.launch(ctx, 1, (1, 1, 1), (1, 3))
    assert r.launch(ctx, 0, (1, 1, 1), (1, 3)) and r.launch(ctx, 2, (1, 1, 1), (1, 3))
    assert all(type(key[0]) is int for key in r._cache if key[0] != ctx[2])


def test_globals_changed_is_jit_runs_check():
    marker = object()
    assert not _globals_changed(SimpleNamespace(used_global_vals={("A", 0): (marker, {"A": marker})}))
    assert not _globals_changed(SimpleNamespace(used_global_vals={("A", 0): (3, {"A": 3})}))  # equal, not the same
    assert _globals_changed(SimpleNamespace(used_global_vals={("A", 0): (3, {"A": 4})}))
    assert _globals_changed(SimpleNamespace(used_global_vals={("A", 0): (3, {})}))
