"""The Triton quantizer (kernels/attention_fp8/quant_launch.py) against the PyTorch one
(kernels/attention_fp8/quant.py): the same bytes for every recipe, over odd shapes with planted large values; the
fused FP8 attention equals the unfused one.
Runs the real kernels (the interpreter here, compiled on a GPU)."""

import itertools

import pytest
import torch

from flashcore.kernels.attention_fp8.quant import FP8_DTYPE, Recipe, quantize
from flashcore.kernels.attention_fp8.quant_launch import attention_fp8_fused, quantize_fused

from _shapes import shape_id

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1, 3, 77, 64), (2, 1, 50, 32), (1, 2, 130, 128), (1, 1, 1, 16)]
RECIPES = [Recipe(qk_fp8=qk, pv_fp8=pv, q_scale=qs, k_scale=ks, v_scale=vs, smooth_k=sm)
           for qk, pv, qs, ks, vs, sm in itertools.product(
               (True, False), (True, False), ("tensor", "head", "block"), ("head", "block"), ("head", "block"),
               (False, True))
           if qk or (qs, ks, sm) == ("tensor", "head", False)]
RECIPES = [r for r in dict.fromkeys(r.canonical() for r in RECIPES)]


def inputs(shape, dtype=torch.float16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    q[..., shape[2] // 2, :] *= 30.0  # a few large values: one token of each far from the others
    k[..., 0, :] += 5.0               # an offset for smoothing to remove
    v[..., -1, :] *= 20.0
    return tuple(t.to(DEVICE, dtype) for t in (q, k, v))


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype == FP8_DTYPE:
        return a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.label for r in RECIPES])
@pytest.mark.parametrize("shape", SHAPES, ids=[shape_id(*s, False).replace("-full", "") for s in SHAPES])
def test_same_bytes_as_the_pytorch_quantizer(shape, recipe):
    q, k, v = inputs(shape)
    want = quantize(q, k, v, recipe, 64, 32)
    got = quantize_fused(q, k, v, recipe, 64, 32)
    for name in ("q", "k", "v", "q_scale", "k_scale", "v_scale"):
        assert same_bytes(getattr(got, name), getattr(want, name)), name
    assert got.recipe == want.recipe and got.out_dtype == want.out_dtype


def test_non_contiguous_inputs_and_bf16():
    q, k, v = inputs((2, 3, 77, 64), torch.bfloat16)
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))  # (B, S, H, D) storage
    recipe = Recipe(q_scale="block", k_scale="block", v_scale="block", smooth_k=True)
    want, got = quantize(q, k, v, recipe, 64, 64), quantize_fused(qt, kt, vt, recipe, 64, 64)
    for name in ("q", "k", "v", "q_scale", "k_scale", "v_scale"):
        assert same_bytes(getattr(got, name), getattr(want, name)), name


def test_fused_attention_equals_the_unfused_one():
    from flashcore.kernels.attention_fp8.launch import attention_fp8

    q, k, v = inputs((1, 3, 77, 64))
    config = dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1, CAUSAL_SPLIT=True, FP8_QK=True, FP8_PV=True,
                  Q_SCALE="block", K_SCALE="head", V_SCALE="head", SMOOTH_K=True, P_SCALE=True)
    want = attention_fp8(q, k, v, config, causal=True, out=torch.full_like(q, float("nan")))
    got = attention_fp8_fused(q, k, v, config, causal=True, out=torch.full_like(q, float("nan")))
    assert torch.equal(got, want)


LONG = [Recipe(), Recipe(q_scale="block", k_scale="block", v_scale="block", smooth_k=True), Recipe(qk_fp8=False),
        Recipe(q_scale="tensor", pv_fp8=False)]


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", [*LONG[:2], *(pytest.param(r, marks=pytest.mark.slow) for r in LONG[2:])],
                         ids=[r.label for r in LONG])  # fast tier: the per-head and the per-block recipes
def test_same_bytes_on_the_gpu_at_a_long_odd_point(recipe):
    q, k, v = inputs((2, 3, 4099, 128))
    assert q.is_cuda
    want, got = quantize(q, k, v, recipe, 128, 64), quantize_fused(q, k, v, recipe, 128, 64)
    for name in ("q", "k", "v", "q_scale", "k_scale", "v_scale"):
        assert same_bytes(getattr(got, name), getattr(want, name)), name


def test_get_kernel_serves_the_fused_quantization(tmp_path):
    from flashcore.autotune import get_kernel
    from flashcore.kernels.attention_fp8.launch import attention_fp8

    q, k, v = inputs((1, 3, 77, 64))
    kernel = get_kernel((1, 3, 77, 64), dtype="fp8", kernel="attention_fp8", causal=True, gpu="auto",
                        db=tmp_path / "cache.db")
    assert kernel.source == "default"
    want = attention_fp8(q, k, v, kernel.config, causal=True)
    assert torch.equal(kernel(q, k, v), want)
