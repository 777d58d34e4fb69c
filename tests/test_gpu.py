"""On the GPU: the compiled kernel against fp32 over odd shapes and every config of the space at one point,
a real sweep on the device's profile, and get_kernel serving its winner. Skipped without CUDA."""

import pytest
import torch

from autotune import Point, check, get_kernel, resolve_profile
from autotune._inputs import make_inputs
from autotune._sweep import tune_point
from cache import CacheStore
from kernels import KernelError
from kernels.launch import attention_fwd
from kernels.reference import attention_reference
from search_spaces import load_space

from _shapes import shape_id

pytestmark = pytest.mark.gpu

SHAPES = [(1, 3, 77, 64, False), (2, 5, 1000, 64, True), (1, 2, 333, 128, True), (2, 1, 1, 64, False),
          (1, 4, 2049, 128, False), (1, 2, 200, 80, True), (1, 1, 32768, 128, True)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[shape_id(*s) for s in SHAPES])
def test_compiled_kernel_matches_fp32(shape, dtype):
    point = Point(*shape, dtype=dtype)
    profile = resolve_profile("auto")
    space = load_space("attention_fwd")
    q, k, v = make_inputs(point, "cuda")
    ref = attention_reference(q, k, v, causal=point.causal)
    for config in (space.default_for(point, profile),
                   dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, CAUSAL_SPLIT=point.causal),
                   dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=2, CAUSAL_SPLIT=point.causal)):
        out = torch.full_like(q, float("nan"))
        attention_fwd(q, k, v, config, causal=point.causal, out=out)
        verdict = check(out, ref, dtype)
        assert verdict.passed, f"{config}: {verdict.reason}"


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_every_valid_config_is_correct_or_fails_typed(causal):
    # The anchors saw a causal two-loop kernel silently wrong for BLOCK_N > BLOCK_M; ours must be right for all.
    point = Point(2, 3, 1000, 64, causal)
    profile = resolve_profile("auto")
    space = load_space("attention_fwd")
    q, k, v = make_inputs(point, "cuda")
    ref = attention_reference(q, k, v, causal=causal)
    wrong = []
    for config in space.candidates(point, profile):
        out = torch.full_like(q, float("nan"))
        try:
            attention_fwd(q, k, v, config, causal=causal, out=out)
            torch.cuda.synchronize()
        except KernelError:
            continue
        verdict = check(out, ref, "float16")
        if not verdict.passed:
            wrong.append((config, verdict.reason))
    assert not wrong, wrong[:3]


def test_sweep_one_point_and_serve_it(tmp_path):
    profile = resolve_profile("auto")
    point = Point(4, 8, 512, 64, True)
    path = tmp_path / "gpu.db"
    with CacheStore.open(path) as store:
        res = tune_point(point, profile=profile, store=store, trials=8, seed=0, rep_ms=20)
    assert res.best is not None and res.best.rel_err < 2e-3
    kernel = get_kernel((4, 8, 512, 64), causal=True, db=path)
    assert kernel.source == "exact" and kernel.config == res.best.config
    q, k, v = make_inputs(point, "cuda")
    assert check(kernel(q, k, v), attention_reference(q, k, v, causal=True), "float16").passed


def test_drop_in_op_under_torch_compile_fullgraph_matches_eager():
    import autotune

    point = Point(2, 8, 1000, 64, True)
    q, k, v = make_inputs(point, "cuda")

    def layer(q, k, v):
        return autotune.attention(q, k, v, is_causal=True)

    eager = layer(q, k, v)
    compiled = torch.compile(layer, fullgraph=True)(q, k, v)
    ref = attention_reference(q, k, v, causal=True)
    assert check(eager, ref, "float16").passed and check(compiled, ref, "float16").passed
    torch.library.opcheck(torch.ops.flashcore.attention.default, (q, k, v, True, None))
