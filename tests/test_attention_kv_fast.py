"""attention_kv's served path (kernels/attention_kv/fastlaunch.py: KvServer, kernels/fastrun.py) against the
launcher and the fp32 reference, in Triton's interpreter: odd lengths, groups 1/4/7, splits, both alignments,
outputs and workspaces poisoned with NaN; the server's own launch key against the specialization classes of the
arguments it stands for; the repeated (keyed, pointer-int, direct) launch with Triton's launcher stubbed by one
that runs the interpreter. (The GPU side, the repeated launch itself, is in tests/test_gpu_serving.py.)
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from flashcore.autotune import check
from flashcore.kernels import KernelInputError
from flashcore.kernels import fastrun
from flashcore.kernels.fastrun import FastRunner, arg_class
from flashcore.kernels.attention_kv import fastlaunch
from flashcore.kernels.attention_kv.fastlaunch import KvServer
from flashcore.kernels.attention_kv.kernel import attn_kv_combine, attn_kv_fwd
from flashcore.kernels.attention_kv.launch import attention_kv

from test_attention_kv import MASKS, make_kv_inputs, sdpa_truth

CASES = [  # (B, Hq, Hkv, L, S, D, mask, splits, pack)
    (1, 4, 1, 1, 1, 32, "causal_lr", 1, True),       # one key
    (2, 4, 1, 1, 3, 32, "causal_lr", 2, True),       # more splits than key blocks: empty splits
    (1, 7, 1, 3, 41, 32, "causal_lr", 3, True),      # group 7, a split count that is no power of two
    (3, 4, 4, 1, 77, 64, "full", 4, False),          # group 1, batch 3
    (1, 8, 2, 5, 70, 32, "causal_tl", 2, False),     # top-left: rows see few keys
    (1, 4, 1, 16, 4097, 16, "causal_lr", 8, True),   # a long odd cache
]


ALLOCATED: list[torch.Tensor] = []  # what the server allocated in this test (the stub launcher's memory)


@pytest.fixture(autouse=True)
def _poisoned(monkeypatch):
    """Every tensor the server allocates (output, split workspace) starts as NaN: an element it never writes,
    or a partial it never fills, reaches the output as NaN and fails the check."""
    real_empty, real_empty_like = torch.empty, torch.empty_like
    ALLOCATED.clear()

    def poisoned(tensor):
        ALLOCATED.append(tensor)
        return tensor.fill_(float("nan"))

    class Poisoned:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def empty(*args, **kwargs):
            return poisoned(real_empty(*args, **kwargs))

        @staticmethod
        def empty_like(*args, **kwargs):
            return poisoned(real_empty_like(*args, **kwargs))

    monkeypatch.setattr(fastlaunch, "torch", Poisoned())
    yield
    ALLOCATED.clear()


def config(splits: int, pack: bool) -> dict:
    return dict(BLOCK_M=16, BLOCK_N=16, num_warps=2, num_stages=1, NUM_SPLITS=splits, PACK_GQA=pack)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-H{c[1]}kv{c[2]}-L{c[3]}-S{c[4]}-D{c[5]}-{c[6]}"
                                                      f"-ns{c[7]}{'-pack' if c[8] else ''}")
def test_the_server_is_the_launcher_and_the_reference(case):
    b, hq, hkv, lq, s, d, mask, splits, pack = case
    causal, lower_right = MASKS[mask]
    q, k, v = make_kv_inputs(b, hq, hkv, lq, s, d)
    server = KvServer(config(splits, pack), causal, lower_right)
    out = server(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    assert torch.equal(out, attention_kv(q, k, v, config(splits, pack), causal=causal, lower_right=lower_right))
    assert check(out, sdpa_truth(q, k, v, mask), "float16").passed


def test_strided_inputs_and_a_scale():
    """A cache viewed out of a larger buffer (transposed heads, an offset) is read through its own strides."""
    q, k, v = make_kv_inputs(2, 6, 2, 1, 45, 32)
    big_k = torch.zeros(2, 45, 2, 40, dtype=k.dtype)
    big_k[..., 3:35] = k.transpose(1, 2)
    k_view = big_k[..., 3:35].transpose(1, 2)
    assert not k_view.is_contiguous()
    out = KvServer(config(2, True), True, True)(q, k_view, v, 0.3)
    assert check(out, sdpa_truth(q, k, v, "causal_lr", sm_scale=0.3), "float16").passed


def test_a_planted_bug_in_the_split_workspace_is_caught(monkeypatch):
    """The poisoned workspace is what the check sees: combine reading one partial short leaves NaN."""
    q, k, v = make_kv_inputs(1, 4, 1, 1, 70, 32)
    real = fastlaunch._COMBINE

    class Short:  # the combine launch (the interpreter's generic path), one split short
        meta_id = staticmethod(real.meta_id)

        def __call__(self, grid, args, meta, meta_id=None):
            po, plse, out, ns, *rest = args
            return real(grid, (po, plse, out, ns - 1, *rest), meta, meta_id)

    monkeypatch.setattr(fastlaunch, "_COMBINE", Short())
    out = KvServer(config(4, True), True, True)(q, k, v)
    assert not check(out, sdpa_truth(q, k, v, "causal_lr"), "float16").passed


def test_the_server_checks_its_inputs_and_run_does_not():
    server = KvServer(config(1, False), False)
    q, k, v = make_kv_inputs(1, 4, 2, 1, 20, 32)
    with pytest.raises(KernelInputError):
        server(q, k[:, :, :, :16], v)
    with pytest.raises(KernelInputError):
        KvServer(config(1, False), False, lower_right=True)


def test_arg_class_follows_triton_specialization():
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    values = [0, 1, 2, 15, 16, 17, 48, -16, -5, (1 << 31) - 16, 1 << 31, (1 << 31) + 5, 1 << 40, True, False, 0.5]
    t = torch.empty(64, dtype=torch.float16)
    values += [t, t[1:], t[8:], t.float()]
    triton_class = {}
    for value in values:
        ours = arg_class(value)
        theirs = native_specialize_impl(BaseBackend, value, False, True, True)
        triton_class.setdefault(ours, set()).add(theirs)
    # one class of ours never holds two of Triton's: equal keys compile to the same kernel
    assert all(len(theirs) == 1 for theirs in triton_class.values()), triton_class


# --- the server's own key: as fine as Triton's classes of the arguments it stands for -----------------------

class Recorder:
    """Stands for a FastRunner with the fast path on: ``launch`` finds nothing (so every call also passes its
    tensors to ``first``) and records; nothing runs."""

    enabled = True

    def __init__(self):
        self.calls, self._ids, self._pending = [], {}, None

    def meta_id(self, meta):
        return self._ids.setdefault(tuple(sorted(meta.items())), len(self._ids))

    def launch(self, ctx, key, grid, args):
        self._pending = (key, grid, args)
        return False

    def first(self, ctx, key, grid, args, meta):
        assert self._pending[:2] == (key, grid)
        self.calls.append((key, self._pending[2], args, meta))

    def __call__(self, grid, args, meta, meta_id=None):  # the generic path
        self.calls.append((None, None, args, meta))


@pytest.fixture
def recorded(monkeypatch):
    runners = Recorder(), Recorder()
    monkeypatch.setattr(fastlaunch, "_FWD", runners[0])
    monkeypatch.setattr(fastlaunch, "_COMBINE", runners[1])
    monkeypatch.setattr(fastlaunch, "launch_context", lambda: (0, 1234, ("keyed", 0, False, "")))
    monkeypatch.setattr(fastlaunch, "_COMBINE_METAS", {})
    return runners


def layout(rng, shape, dtype, device="cpu"):
    """A tensor of ``shape``: contiguous, a slice of a longer one along dim 2, heads and positions swapped in
    memory, or one element into a flat buffer (not 16-byte aligned)."""
    b, h, n, d = shape
    kind = rng.choice(["contiguous", "sliced", "transposed", "offset"])
    if kind == "sliced":
        return torch.empty(b, h, n + rng.randrange(1, 20), d, dtype=dtype, device=device)[:, :, :n]
    if kind == "transposed":
        return torch.empty(b, n, h, d, dtype=dtype, device=device).transpose(1, 2)
    if kind == "offset":
        return torch.empty(b * h * n * d + 8, dtype=dtype, device=device)[1:b * h * n * d + 1].view(shape)
    return torch.empty(shape, dtype=dtype, device=device)


def sweep(rng, calls: int):
    """Random server calls: configs, masks, groups, lengths (1, 16-multiples, odd), layouts, dtypes."""
    servers = {}
    for _ in range(calls):
        splits, pack, mask = rng.choice([1, 3]), rng.random() < 0.5, rng.choice(list(MASKS))
        server = servers.setdefault((splits, pack, mask), KvServer(config(splits, pack), *MASKS[mask]))
        b, hkv, g, lq = rng.choice([1, 2]), rng.choice([1, 2]), rng.choice([1, 2, 3]), rng.choice([1, 2, 16, 17])
        s, d = rng.choice([1, 2, 15, 16, 17, 32, 33, rng.randrange(1, 90)]), rng.choice([5, 8, 16, 24])
        s = max(s, lq) if mask == "causal_lr" else s
        dtype = rng.choice([torch.float16, torch.bfloat16])
        q = layout(rng, (b, hkv * g, lq, d), dtype)
        k = layout(rng, (b, hkv, s, d), dtype if rng.random() < 0.9 else torch.float16)
        v = layout(rng, (b, hkv, s, d), dtype)
        server.run(q, k, v, rng.choice([None, 0.5]))


def check_keys(runners) -> int:
    """Each call's pointer ints are its tensors' data_ptr(), and one key of the server never stands for two
    tuples of Triton classes (keywords included). Returns how many calls took the keyed path."""
    keyed = 0
    for runner in runners:
        classes_of: dict = {}
        for key, fast_args, args, meta in runner.calls:
            if key is None:
                continue
            keyed += 1
            assert fast_args == tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args)
            classes_of.setdefault(key, set()).add((runner.meta_id(meta), tuple(map(arg_class, args))))
        assert all(len(classes) == 1 for classes in classes_of.values())
    return keyed


def test_the_servers_key_is_as_fine_as_tritons_classes(recorded):
    server = KvServer(config(3, False), False)
    for hkv, hq in ((1, 2), (2, 4)):  # every int of one class, q 2 bytes in; the partial LSEs 120, 240 bytes in
        q = torch.empty(hq * 5 + 1, dtype=torch.float16)[1:].view(1, hq, 1, 5)
        server.run(q, *(torch.empty(1, hkv, 7, 5, dtype=torch.float16) for _ in range(2)))
    sweep(random.Random(0), 600)
    assert check_keys(recorded) == len(recorded[0].calls) + len(recorded[1].calls)
    assert len({c[0] for c in recorded[0].calls}) > 40  # the sweep reaches many classes


def test_a_planted_coarse_server_key_is_caught(recorded, monkeypatch):
    """The check above fails for a key that forgets the constant 1 among the kv ints (a plant)."""
    monkeypatch.setattr(fastlaunch, "int_classes", lambda ints: tuple(not x & 15 for x in ints))
    sweep(random.Random(0), 600)
    with pytest.raises(AssertionError):
        check_keys(recorded)


def test_a_decode_over_a_growing_cache_needs_few_keys_and_wide_ints_take_the_generic_path(recorded):
    server = KvServer(config(3, True), True, True)
    q = torch.empty(1, 8, 1, 16, dtype=torch.float16)
    cache = torch.empty(1, 2, 100, 16, dtype=torch.float16)
    for s in range(30, 90):
        server.run(q, cache[:, :, :s], cache[:, :, :s])
    assert check_keys(recorded) == 120 and len({c[0] for c in recorded[0].calls}) <= 3
    wide = torch.empty_strided((1, 2, 40, 16), (1 << 31, 16, 32, 1), dtype=torch.float16, device="meta")
    server.run(q.to("meta"), wide, wide)
    assert recorded[0].calls[-1][0] is None and recorded[1].calls[-1][0] is None


# --- the repeated launch itself, Triton's launcher stubbed by one that runs the interpreter ------------------

class StubLauncher:
    """The compiled kernel's launcher, taken for a direct one (``fastrun._direct``): its C launch function maps
    the pointer ints back to tensors over the memory they point into and runs the interpreter."""

    global_scratch_size = profile_scratch_size = 0
    launch_cooperative_grid = launch_pdl = False

    def __init__(self, jit, args, meta, memory):
        self.jit, self.meta, self.memory, self.calls = jit, meta, memory, 0
        self.dtypes = [a.dtype if isinstance(a, torch.Tensor) else None for a in args]
        self.launch = self._launch

    def _launch(self, g0, g1, g2, stream, function, coop, pdl, scratch, profile, packed, meta, enter, exit_, *args):
        assert (stream, function, packed, scratch, profile, enter, exit_) == (1234, "f", "p", None, None, None, None)
        args = [self.memory(a, dt) if dt is not None else a for a, dt in zip(args, self.dtypes)]
        self.calls += 1
        self.jit[(g0, g1, g2)](*args, **self.meta)


class StubFn:
    def __init__(self, jit, memory):
        self.jit, self.memory, self.arg_names = jit, memory, jit.arg_names
        self.pre_run_hooks, self.used_global_vals, self.launchers = [], {}, []

    def __getitem__(self, grid):
        return self.jit[grid]

    def warmup(self, *args, grid, **meta):
        self.launchers.append(StubLauncher(self.jit, args, meta, self.memory))
        return SimpleNamespace(run=self.launchers[-1], function="f", packed_metadata="p")


def tensor_at(tensors):
    def at(ptr: int, dtype: torch.dtype) -> torch.Tensor:
        for t in tensors():
            storage = t.untyped_storage()
            offset = ptr - storage.data_ptr()
            if 0 <= offset < storage.nbytes():
                size = dtype.itemsize
                return torch.empty(0, dtype=dtype).set_(storage, offset // size, ((storage.nbytes() - offset) // size,))
        raise AssertionError(f"no tensor holds address {ptr}")
    return at


def test_repeated_launches_are_the_launchers_output(monkeypatch):
    inputs: list[torch.Tensor] = []
    memory = tensor_at(lambda: inputs + ALLOCATED)
    runners = []
    for jit in (attn_kv_fwd, attn_kv_combine):
        runner = FastRunner(StubFn(jit, memory))
        runner.enabled, runner._params = True, list(jit.arg_names)
        runners.append(runner)
    monkeypatch.setattr(fastlaunch, "_FWD", runners[0])
    monkeypatch.setattr(fastlaunch, "_COMBINE", runners[1])
    monkeypatch.setattr(fastlaunch, "_COMBINE_METAS", {})
    monkeypatch.setattr(fastlaunch, "launch_context", lambda: (0, 1234, ("keyed", 0, False, "")))
    monkeypatch.setattr(fastrun, "_direct_types", lambda: (StubLauncher,))
    server = KvServer(config(3, True), True, True)
    cache_k, cache_v = make_kv_inputs(1, 4, 2, 1, 60, 32, seed=3)[1:]
    for step, s in enumerate((41, 42, 47, 35)):  # S and S - 1 never a multiple of 16: one class
        q = make_kv_inputs(1, 4, 2, 1, s, 32, seed=step)[0]
        k, v = cache_k[:, :, :s], cache_v[:, :, :s]
        inputs[:] = [q, k, v]
        out = server(q, k, v)
        assert torch.equal(out, attention_kv(q, k, v, config(3, True), causal=True, lower_right=True)), s
    assert [(r.misses, r.hits, r.fallbacks) for r in runners] == [(1, 3, 0), (1, 3, 0)]
    assert [launcher.calls for r in runners for launcher in r.fn.launchers] == [3, 3]
