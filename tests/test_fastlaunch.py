"""The fast launcher (kernels/attention_fwd/fastlaunch.py) without a GPU: it falls back under the interpreter with
the normal launcher's result; its signature key and config key; its LRU; and, with Triton's launch stubbed by one
that runs the interpreter on the recorded arguments, the hit path (same output as the normal launcher, the call
JITFunction.run makes, fallbacks, typed errors). tests/test_fastlaunch_gpu.py checks the real launches."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from triton import knobs
from triton.knobs import HookChain

from flashcore import autotune
from flashcore.autotune import Point, get_kernel
from flashcore.autotune.runtime import op as _op
from flashcore.autotune.tuning.inputs import make_inputs
from flashcore.kernels import KernelLaunchError
from flashcore.kernels.attention_fwd import fastlaunch as fl
from flashcore.kernels.attention_fwd.kernel import attn_fwd
from flashcore.kernels.attention_fwd.launch import _kernel_args, attention_fwd

CONFIG = dict(BLOCK_M=16, BLOCK_N=16, num_warps=2, num_stages=1)
CKEY = fl.config_key(CONFIG)


@pytest.fixture(autouse=True)
def _fresh_cache():
    fl.clear_cache()
    yield
    fl.clear_cache()


def inputs(b=1, h=3, s=37, d=64, causal=True, dtype="float16"):
    return make_inputs(Point(b, h, s, d, causal, dtype))


def test_under_the_interpreter_it_falls_back_to_the_normal_launcher():
    assert not fl.ENABLED
    q, k, v = inputs()
    launcher = fl.FastLauncher(CONFIG, causal=True)
    assert not launcher.fast
    for _ in range(2):
        assert torch.equal(launcher(q, k, v), attention_fwd(q, k, v, CONFIG, causal=True))
    assert (launcher.hits, launcher.misses, launcher.fallbacks) == (0, 0, 2) and fl.cache_size() == 0


def test_tuned_kernels_launch_through_it_and_eager_attention_skips_the_op_dispatch():
    point = Point(1, 2, 40, 32, True)
    q, k, v = make_inputs(point)
    kernel = get_kernel(tuple(q.shape), dtype=q.dtype, causal=True)
    out = autotune.attention(q, k, v, is_causal=True)
    assert isinstance(kernel._launch, fl.FastLauncher) and kernel._launch.fallbacks == 1
    assert torch.equal(out, attention_fwd(q, k, v, kernel.config, causal=True))
    assert _op._eager(q, k, v)

    class Record(TorchDispatchMode):
        ops: list

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    mode = Record()
    mode.ops = []
    with mode:
        assert not _op._eager(q, k, v)
        traced = autotune.attention(q, k, v, is_causal=True)
    assert "flashcore.attention.default" in mode.ops and torch.equal(traced, out)


def test_eager_is_off_for_subclasses_modes_transforms_and_the_profiler():
    q, k, v = inputs()
    assert not _op._eager(torch.nn.Parameter(q, requires_grad=False), k, v)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        assert not _op._eager(q, k, v)
    with torch.device("cpu"):  # a torch-function mode
        assert not _op._eager(q, k, v)
    seen = []
    torch.vmap(lambda x: seen.append(_op._eager(x, x, x)) or x)(q)  # a functorch transform
    assert seen == [False]


def test_signature_key_tells_apart_what_changes_the_launch():
    q, k, v = inputs()
    key = lambda q=q, k=k, v=v, cfg=CKEY, causal=True, scale=None, dev=0: fl.signature_key(  # noqa: E731
        cfg, causal, scale, dev, q, k, v)
    same = inputs()  # other tensors, same layout
    assert key(*same) == key()
    transposed = torch.randn(1, 37, 3, 64, dtype=torch.float16).transpose(1, 2)  # same shape, other strides
    assert transposed.shape == q.shape and key(q=transposed) != key() and key(k=transposed) != key()
    flat = torch.randn(q.numel() + 8, dtype=torch.float16)
    unaligned = flat[1:q.numel() + 1].view(q.shape)  # 2 bytes in: not 16-byte aligned
    aligned = flat[8:].view(q.shape)  # 16 bytes in: aligned, same strides
    assert key(v=unaligned) != key() and key(v=aligned) == key()
    others = [key(*inputs(s=38)), key(*inputs(dtype="bfloat16")), key(causal=False), key(scale=0.125),
              key(scale=0.25), key(dev=1), key(cfg=fl.config_key({**CONFIG, "BLOCK_M": 32})),
              key(k=inputs(h=4)[1])]
    assert len({key(), *others}) == len(others) + 1


def test_config_key_only_for_valid_pointer_load_configs():
    assert fl.config_key(dict(reversed(list(CONFIG.items())))) == CKEY
    assert fl.config_key({**CONFIG, "LOADS": "pointer", "CAUSAL_SPLIT": True}) is not None
    for bad in ({**CONFIG, "LOADS": "device_tma"}, {**CONFIG, "LOADS": "host_tma"}, {**CONFIG, "PERSISTENT": True},
                {**CONFIG, "BLOCK_M": 10}, {**CONFIG, "CAUSAL_SPLIT": 1}, {**CONFIG, "nope": 1}):
        assert fl.config_key(bad) is None, bad


def test_the_cache_is_a_bounded_lru(monkeypatch):
    monkeypatch.setattr(fl, "MAX_ENTRIES", 4)
    for i in range(10):
        fl.remember(("k", i), ["entry", i])
    assert fl.cache_size() == 4 and fl.cached_signatures() == [("k", i) for i in range(6, 10)]


# --- the hit path, with Triton's launch stubbed -----------------------------------------------------------

class StubKernel:
    """Stands for the CompiledKernel: its ``run`` records the call and runs the interpreter on the arguments."""

    def __init__(self, config, state):
        self.config, self.state = config, state
        self.function, self.packed_metadata = "function", "packed"

    @property
    def run(self):
        def run(g0, g1, g2, stream, function, packed, launch_metadata, enter, exit_, *args):
            self.state.calls.append((g0, g1, g2, stream, function, packed, launch_metadata, enter, exit_, args))
            if self.state.fail:
                raise self.state.fail
            attn_fwd[(g0, g1, g2)](*args, num_warps=self.config["num_warps"], num_stages=self.config["num_stages"])
        return run


@pytest.fixture
def stubbed(monkeypatch):
    """The fast path switched on under the interpreter, with Triton's launch stubbed (see StubKernel)."""
    state = SimpleNamespace(calls=[], compiled=[], fail=None)
    active = SimpleNamespace(get_current_device=lambda: 0, get_current_stream=lambda device: 1234)
    monkeypatch.setattr(fl, "ENABLED", True)
    monkeypatch.setattr(fl, "driver", SimpleNamespace(active=active))
    monkeypatch.setattr(attn_fwd, "used_global_vals", {}, raising=False)

    def compiled_kernel(fn, args, grid, kwargs):
        state.compiled.append((args, grid, kwargs))
        return StubKernel(kwargs, state)

    monkeypatch.setattr(fl, "compiled_kernel", compiled_kernel)
    return state


def test_a_hit_makes_the_call_jit_run_makes_with_the_normal_launchers_result(stubbed):
    launcher = fl.FastLauncher(CONFIG, causal=True)
    q, k, v = inputs()
    first = launcher(q, k, v)
    assert (launcher.misses, launcher.hits, len(stubbed.compiled), stubbed.calls) == (1, 0, 1, [])
    q2, k2, v2 = (t * 0.5 for t in inputs())
    out = launcher(q2, k2, v2)
    assert torch.equal(first, attention_fwd(q, k, v, CONFIG, causal=True))
    assert torch.equal(out, attention_fwd(q2, k2, v2, CONFIG, causal=True)) and launcher.hits == 1
    g0, g1, g2, stream, function, packed, meta, enter, exit_, args = stubbed.calls[0]
    grid, kargs, kwargs = _kernel_args(q2, k2, v2, out, CONFIG, True, None)
    assert (g0, g1, g2, stream, function, packed, meta, enter, exit_) == (*grid, 1, 1234, "function", "packed",
                                                                          None, None, None)
    assert args[:4] == (q2, k2, v2, out) and args[4:len(kargs)] == kargs[4:]
    assert args[len(kargs):] == tuple(kwargs[n] for n in attn_fwd.arg_names[len(kargs):])


def test_what_the_signature_does_not_cover_goes_to_the_normal_launcher(stubbed, monkeypatch):
    launcher = fl.FastLauncher(CONFIG, causal=False)
    q, k, v = inputs(causal=False)
    launcher(q, k, v)
    launcher(q, k, v, sm_scale=1)  # an int scale: not a float
    launcher(q, k, v, sm_scale=-0.0)  # a zero scale: 0.0 and -0.0 are one key
    with monkeypatch.context() as m:
        m.setattr(knobs.runtime, "launch_enter_hook", lambda *a: None)  # a plain callable
        launcher(q, k, v)
    chain = HookChain()
    chain.add(lambda *a: None)
    with monkeypatch.context() as m:
        m.setattr(knobs.runtime, "launch_exit_hook", chain)  # a chain with a hook in it
        launcher(q, k, v)
    with monkeypatch.context() as m:
        m.setattr(attn_fwd, "pre_run_hooks", [lambda *a, **kw: None])
        launcher(q, k, v)
    assert (launcher.misses, launcher.hits, launcher.fallbacks) == (1, 0, 5)
    launcher(q, k, v)  # empty chains (Triton's default) or None: fast
    with monkeypatch.context() as m:
        m.setattr(knobs.runtime, "launch_enter_hook", None)
        launcher(q, k, v)
    assert (launcher.misses, launcher.hits, launcher.fallbacks) == (1, 2, 5)


def test_hits_refresh_the_lru_and_failures_are_typed(stubbed, monkeypatch):
    monkeypatch.setattr(fl, "MAX_ENTRIES", 2)
    launcher = fl.FastLauncher(CONFIG, causal=False)
    a, b, c = inputs(s=20, causal=False), inputs(s=21, causal=False), inputs(s=22, causal=False)
    launcher(*a), launcher(*b), launcher(*a), launcher(*c)  # a is used again before c comes: b goes
    assert fl.cache_size() == 2 and [key[4][2] for key in fl.cached_signatures()] == [20, 22]  # key[4]: q.shape
    launcher(*a)
    assert (launcher.misses, launcher.hits) == (3, 2)
    launcher(*b)
    assert launcher.misses == 4
    stubbed.fail = RuntimeError("CUDA error: an illegal memory access was encountered")
    fl.clear_cache()
    launcher(*a)  # recorded with a failing stub
    with pytest.raises(KernelLaunchError, match="illegal memory access"):
        launcher(*a)
