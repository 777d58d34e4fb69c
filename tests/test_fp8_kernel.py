"""The FP8 Triton kernel (kernels/attention_fp8/kernel.py) against its emulation and the fp32 truth, in Triton's CPU
interpreter (which runs E4M3 dots exactly; its fp32 -> E4M3 cast is wrong, so the launcher rounds P first, and
its bf16 dots are wrong, so 16-bit dots are upcast: see the kernel's docstring) and, marked gpu, on a GPU."""

import dataclasses

import pytest
import torch
import triton
import triton.language as tl

from flashcore.kernels.attention_fp8.gate import check_fp8, report_fp8
from flashcore.autotune.tuning.inputs import make_inputs
from flashcore.autotune.core.problem import Point
from flashcore.kernels.attention_fp8.kernel import _round_e4m3
from flashcore.kernels.attention_fp8.reference import attention_fp8_emulated, emulate_quantized
from flashcore.kernels.attention_fp8.launch import attention_fp8, attention_fp8_quantized
from flashcore.kernels.attention_fp8.quant import FP8_DTYPE, Recipe, quantize
from flashcore.kernels.reference import attention_reference

from _shapes import shape_id
from _tiers import tiered

RECIPES = {
    "per-head": Recipe(),
    "per-block-smooth": Recipe(q_scale="block", k_scale="block", v_scale="block", smooth_k=True),
    "per-tensor-no-p-scale": Recipe(q_scale="tensor", k_scale="tensor", v_scale="tensor", p_scale=False),
    "qk16": Recipe(qk_fp8=False, v_scale="block"),
    "pv16": Recipe(pv_fp8=False, k_scale="block"),
}
# Kernel against emulation: the same arithmetic up to summation order and the final 16-bit cast.
TIGHT = {"float16": 1e-3, "bfloat16": 8e-3}
# Emulation's own error against the fp32 truth stays under this on these inputs (tests/test_fp8.py).
RECIPE_ERROR = 0.12
CONFIG = dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1)


def _rel(x, ref):
    return float((x.float() - ref).norm() / ref.norm())


def _run(point, recipe, config, device="cpu"):
    q, k, v = make_inputs(point, device)
    config = {**config, "CAUSAL_SPLIT": point.causal, **recipe.to_config()}
    out = torch.full_like(q, float("nan"))  # poisoned: a row or column never written fails the gate
    attention_fp8(q, k, v, config, causal=point.causal, out=out)
    emu = attention_fp8_emulated(q, k, v, recipe, config["BLOCK_M"], config["BLOCK_N"], causal=point.causal)
    return out, emu, attention_reference(q, k, v, causal=point.causal), v


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_kernel_matches_emulation_and_budget(causal, recipe):
    point = Point(1, 3, 77, 64, causal)
    out, emu, ref, v = _run(point, RECIPES[recipe], CONFIG)
    assert _rel(out, emu) < TIGHT["float16"]
    report = report_fp8(out, ref, emu, v=v)
    assert report.passed, report.gate.reason
    assert report.gate.rel_err < RECIPE_ERROR and report.cosine > 0.99


SHAPES = [(2, 1, 50, 32, True, "bfloat16"), (1, 2, 33, 80, False, "float16"), (1, 1, 1, 64, True, "float16"),
          (3, 2, 17, 16, False, "bfloat16")]


@pytest.mark.parametrize("shape", SHAPES, ids=[shape_id(*s) for s in SHAPES])
def test_odd_shapes_and_tiles(shape):
    # S not a multiple of any tile, D not a power of two, one token, bf16 outputs, BLOCK_N > BLOCK_M.
    point = Point(*shape)
    for recipe, config in ((RECIPES["per-block-smooth"], dict(CONFIG, BLOCK_M=16, BLOCK_N=32)),
                           (RECIPES["qk16"], CONFIG)):
        out, emu, ref, _ = _run(point, recipe, config)
        assert out.dtype == (torch.float16 if point.dtype == "float16" else torch.bfloat16)
        assert _rel(out, emu) < TIGHT[point.dtype], recipe.label
        verdict = check_fp8(out, ref, emu)
        assert verdict.passed, f"{recipe.label}: {verdict.reason}"


def test_causal_split_equals_single_loop():
    q, k, v = make_inputs(Point(1, 2, 99, 64, True), "cpu")
    cfg = {**CONFIG, **RECIPES["per-block-smooth"].to_config()}
    a = attention_fp8(q, k, v, {**cfg, "CAUSAL_SPLIT": False}, causal=True)
    b = attention_fp8(q, k, v, {**cfg, "CAUSAL_SPLIT": True}, causal=True)
    torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


def test_quantized_entry_point_and_non_contiguous_inputs():
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 45, 2, 64, dtype=torch.float16).transpose(1, 2) for _ in range(3))
    recipe = RECIPES["per-head"]
    qi = quantize(q, k, v, recipe, 32, 16)
    out = attention_fp8_quantized(qi, {**CONFIG, **recipe.to_config()}, causal=True, sm_scale=0.3)
    emu = emulate_quantized(qi, causal=True, sm_scale=0.3)
    assert _rel(out, emu) < TIGHT["float16"]


@pytest.mark.parametrize("recipe", ["qk16", "pv16"])
def test_nothing_past_a_head_is_read(recipe):
    # The 16-bit operands are read in place: rows past S and columns past D of each head hold NaN here.
    b, h, s, d = 2, 3, 45, 80
    bufs = [torch.full((b, h, s + 5, d + 8), float("nan"), dtype=torch.float16) for _ in range(3)]
    for buf, x in zip(bufs, make_inputs(Point(b, h, s, d, True), "cpu")):
        buf[:, :, :s, :d] = x
    q, k, v = (buf[:, :, :s, :d] for buf in bufs)
    config = {**CONFIG, "CAUSAL_SPLIT": True, **RECIPES[recipe].to_config()}
    out = attention_fp8(q, k, v, config, causal=True)
    emu = attention_fp8_emulated(q, k, v, RECIPES[recipe], 32, 16, causal=True)
    assert check_fp8(out, attention_reference(q, k, v, causal=True), emu).passed
    assert _rel(out, emu) < TIGHT["float16"]


def test_gate_rejects_a_kernel_without_scales():
    # Planted bug: the kernel runs on the E4M3 values with every scale forced to 1 (scales not applied).
    point = Point(1, 3, 77, 64, True)
    q, k, v = make_inputs(point, "cpu")
    recipe = RECIPES["per-block-smooth"]
    config = {**CONFIG, "CAUSAL_SPLIT": True, **recipe.to_config()}
    qi = quantize(q, k, v, recipe, 32, 16)
    ref = attention_reference(q, k, v, causal=True)
    emu = emulate_quantized(qi, causal=True)
    assert check_fp8(attention_fp8_quantized(qi, config, causal=True), ref, emu).passed
    ones = {name: torch.ones_like(getattr(qi, name)) for name in ("q_scale", "k_scale", "v_scale")}
    unscaled = dataclasses.replace(qi, **ones)
    verdict = check_fp8(attention_fp8_quantized(unscaled, config, causal=True), ref, emu)
    assert not verdict.passed and "budget" in verdict.reason


@triton.jit
def _round_kernel(X, Y, N: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(Y + i, _round_e4m3(tl.load(X + i)).to(tl.float8e4nv))


def test_p_rounding_matches_torch_cast():
    # Values over E4M3's whole non-negative range, subnormals, ties and values that carry into the next binade.
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(2048, generator=g) * 448, torch.rand(1024, generator=g) * 0.03,
                   torch.arange(512) * 2.0**-10, torch.tensor([31.83, 0.0303, 447.9, 448.0] * 128)])
    y = torch.empty_like(x, dtype=FP8_DTYPE)
    _round_kernel[(1,)](x, y, x.numel())
    torch.testing.assert_close(y.float(), x.to(FP8_DTYPE).float(), atol=0, rtol=0)


GPU_CASES = [(causal, recipe) for recipe in ("per-head", "per-block-smooth", "qk16") for causal in (False, True)]


@pytest.mark.gpu
@pytest.mark.parametrize("causal, recipe", tiered(  # fast: each recipe once, the masks alternating
    GPU_CASES, [f"{'causal' if c else 'full'}-{r}" for c, r in GPU_CASES],
    fast=["full-per-head", "causal-per-block-smooth", "full-qk16"], unpack=True))
def test_gpu_kernel_passes_the_fp8_gate(causal, recipe):
    # Compiled: native E4M3 wgmma with V K-major, the hardware cast of P; H100 probe tiles.
    point = Point(2, 4, 1000, 128, causal)
    config = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
    out, emu, ref, _ = _run(point, RECIPES[recipe], config, device="cuda")
    verdict = check_fp8(out, ref.to(out.device), emu.to(out.device))
    assert verdict.passed, verdict.reason
