"""On the GPU: the fast launcher (kernels/attention_fwd/fastlaunch.py) against the normal launcher, bit for bit.

Odd S and H, D 64 and 128, causal and not, transposed (non-contiguous) and unaligned inputs; the first call of a
signature misses, the next ones hit; the recorded arguments are Triton's own binder's; the current (non-default)
stream and CUDA graph capture are honoured; TMA and persistent configs go to the normal launcher; the tuned
kernel and autotune.attention take the fast path. Skipped without CUDA. Run: python3 -m pytest -m gpu -q
tests/test_fastlaunch_gpu.py
"""

import pytest
import torch

from flashcore import autotune
from flashcore.autotune import Point
from flashcore.autotune.runtime.dispatch import TunedKernel
from flashcore.autotune.tuning.inputs import make_inputs
from flashcore.kernels.attention_fwd import fastlaunch as fl
from flashcore.kernels.attention_fwd.kernel import attn_fwd
from flashcore.kernels.attention_fwd.launch import _kernel_args, attention_fwd

from _shapes import shape_id
from _tiers import tiered

pytestmark = pytest.mark.gpu

CONFIG = dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
# (B, H, S, D, causal, layout)
CASES = [(2, 3, 77, 64, True, "contiguous"), (2, 3, 77, 64, True, "transposed"), (2, 3, 77, 64, True, "offset"),
         (1, 5, 129, 128, False, "contiguous"), (1, 5, 129, 128, False, "transposed"),
         (3, 1, 50, 64, False, "offset"), (2, 2, 256, 128, True, "contiguous"), (8, 8, 128, 64, False, "contiguous")]


@pytest.fixture(autouse=True)
def _fresh_cache():
    fl.clear_cache()
    yield
    fl.clear_cache()


def laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t``'s values in a new tensor of the same shape: contiguous, a transposed view (strides of a
    (B, S, H, D) buffer) or a view starting 1 element into its buffer (not 16-byte aligned)."""
    if layout == "transposed":
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "offset":
        flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        out = flat[1:].view(t.shape)
        out.copy_(t)
        return out
    return t.clone()


def reference(q, k, v, config, causal, sm_scale=None):
    """The normal launcher on a NaN-poisoned output."""
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)
    return attention_fwd(q, k, v, config, causal=causal, sm_scale=sm_scale, out=out)


def poison_allocator(q):
    """Leave a NaN block of out's size in the caching allocator, for the launcher's next empty_like to take."""
    torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)


def case_id(case):
    return f"{shape_id(*case[:5])}-{case[5]}"


@pytest.mark.parametrize("case", tiered(  # fast: every layout, D 64 and 128, both masks, B 8
    CASES, [case_id(c) for c in CASES],
    fast=["B2-H3-S77-D64-causal-float16-offset", "B1-H5-S129-D128-full-float16-transposed",
          "B2-H2-S256-D128-causal-float16-contiguous", "B8-H8-S128-D64-full-float16-contiguous"]))
def test_bit_identical_to_the_normal_launcher_and_hits_on_the_second_call(case):
    b, h, s, d, causal, layout = case
    q, k, v = (laid_out(t, layout) for t in make_inputs(Point(b, h, s, d, causal), "cuda"))
    if layout == "offset":
        assert q.storage_offset() == 1 and q.data_ptr() % 16
    launcher = fl.FastLauncher(CONFIG, causal)
    expected = reference(q, k, v, CONFIG, causal)
    outs = []
    for _ in range(3):
        poison_allocator(q)
        outs.append(launcher(q, k, v))
    assert (launcher.misses, launcher.hits, launcher.fallbacks) == (1, 2, 0)
    assert not expected.isnan().any()
    for out in outs:
        assert out.is_contiguous() and torch.equal(out, expected)
    q2, k2, v2 = (laid_out(t * 0.5, layout) for t in (q, k, v))  # other tensors, same signature: a hit
    poison_allocator(q2)
    assert torch.equal(launcher(q2, k2, v2, sm_scale=0.1), reference(q2, k2, v2, CONFIG, causal, 0.1))
    assert torch.equal(launcher(q2, k2, v2, sm_scale=0.1), reference(q2, k2, v2, CONFIG, causal, 0.1))
    assert (launcher.misses, launcher.hits) == (2, 3)


def test_recorded_arguments_are_tritons_own_binding():
    q, k, v = make_inputs(Point(2, 3, 77, 64, True), "cuda")
    out = fl.FastLauncher(CONFIG, True)(q, k, v)
    (entry,) = fl._CACHE.values()
    run, function, packed, grid0, grid1, tail, _last_use = entry
    grid, args, kwargs = _kernel_args(q, k, v, out, CONFIG, True, None)
    device = torch.cuda.current_device()
    binder = attn_fwd.device_caches[device][4]
    bound, _, _ = binder(*args, **kwargs)
    assert tuple(bound.values())[4:] == tail and (grid0, grid1) == grid
    kernel = attn_fwd.warmup(*args, grid=grid, **kwargs)
    assert function == kernel.function and packed == kernel.packed_metadata


def test_runs_on_the_current_non_default_stream():
    q, k, v = make_inputs(Point(2, 3, 77, 64, True), "cuda")
    launcher = fl.FastLauncher(CONFIG, True)
    launcher(q, k, v)  # records the signature
    expected = reference(q, k, v, CONFIG, True)
    q2, k2, v2 = (torch.full_like(t, float("nan")) for t in (q, k, v))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # ~25 ms: a launch on another stream would read the NaNs first
        for dst, src in ((q2, q), (k2, k), (v2, v)):
            dst.copy_(src)
        out = launcher(q2, k2, v2)
    side.synchronize()
    assert launcher.hits == 1 and torch.equal(out, expected)


def test_cuda_graph_capture_and_replay():
    q, k, v = make_inputs(Point(2, 2, 256, 128, True), "cuda")
    launcher = fl.FastLauncher(CONFIG, True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        launcher(q, k, v)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = launcher(q, k, v)
    q.mul_(0.5)
    graph.replay()
    torch.cuda.synchronize()
    assert launcher.hits == 1 and torch.equal(out, reference(q, k, v, CONFIG, True))


@pytest.mark.parametrize("extra", [dict(LOADS="device_tma"), dict(LOADS="host_tma"), dict(PERSISTENT=True)],
                         ids=["device_tma", "host_tma", "persistent"])
def test_tma_and_persistent_configs_go_to_the_normal_launcher(extra):
    config = dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2, **extra)
    q, k, v = make_inputs(Point(2, 3, 128, 64, False), "cuda")
    launcher = fl.FastLauncher(config, False)
    outs = [launcher(q, k, v) for _ in range(2)]
    assert not launcher.fast and (launcher.hits, launcher.misses, launcher.fallbacks) == (0, 0, 2)
    expected = reference(q, k, v, config, False)
    assert all(torch.equal(o, expected) for o in outs)


def test_tuned_kernels_and_attention_take_the_fast_path():
    q, k, v = make_inputs(Point(8, 8, 128, 64, False), "cuda")
    tuned = TunedKernel(dict(CONFIG), "default", None, False, "attention_fwd")
    assert torch.equal(tuned(q, k, v), tuned(q, k, v))
    assert isinstance(tuned._launch, fl.FastLauncher) and (tuned._launch.misses, tuned._launch.hits) == (1, 1)
    served = autotune.get_kernel(tuple(q.shape), dtype=q.dtype, causal=False)
    fl.clear_cache()  # the served config may be CONFIG
    outs = [autotune.attention(q, k, v) for _ in range(3)]
    launcher = served._launch
    assert isinstance(launcher, fl.FastLauncher)
    expected = reference(q, k, v, served.config, False)
    assert all(torch.equal(o, expected) for o in outs)
    if fl.config_key(served.config) is not None:
        assert (launcher.misses, launcher.hits) == (1, 2)
    else:
        assert launcher.fallbacks == 3
