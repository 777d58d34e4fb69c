"""The Triton kernel against the fp32 reference, over odd shapes, both masks, every config shape."""

import math

import pytest
import torch

from autotune import check
from autotune._inputs import make_inputs, torch_dtype
from autotune._grids import Point
from kernels import KernelInputError
from kernels.launch import attention_fwd
from kernels.reference import attention_naive, attention_reference

from _shapes import shape_id

# S never a multiple of the tiles below (except S=64), odd H, D not a power of two, a single token.
SHAPES = [
    (1, 3, 77, 64, False), (1, 3, 77, 64, True), (2, 1, 50, 32, True), (1, 2, 130, 128, True),
    (1, 2, 33, 80, False), (1, 1, 1, 64, True), (1, 1, 64, 64, True), (3, 5, 17, 16, False),
]
CONFIGS = [
    dict(BLOCK_M=16, BLOCK_N=16, num_warps=2, num_stages=1, CAUSAL_SPLIT=False),
    dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=2, CAUSAL_SPLIT=True),   # BLOCK_N > BLOCK_M
    dict(BLOCK_M=64, BLOCK_N=16, num_warps=4, num_stages=3, CAUSAL_SPLIT=True),
]


def _run(point, config, device="cpu"):
    q, k, v = make_inputs(point, device)
    out = torch.full_like(q, float("nan"))
    attention_fwd(q, k, v, config, causal=point.causal, out=out)
    return out, attention_reference(q, k, v, causal=point.causal)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[shape_id(*s) for s in SHAPES])
def test_kernel_matches_fp32_reference(shape, dtype):
    point = Point(*shape, dtype=dtype)
    for config in CONFIGS:
        out, ref = _run(point, config)
        verdict = check(out, ref, dtype)
        assert verdict.passed, f"{config}: {verdict.reason}"


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_causal_split_equals_single_loop(causal):
    point = Point(2, 3, 99, 64, causal)
    a, _ = _run(point, dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1, CAUSAL_SPLIT=False))
    b, _ = _run(point, dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1, CAUSAL_SPLIT=causal))
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_non_contiguous_inputs_and_explicit_scale():
    torch.manual_seed(1)
    b, s, h, d = 2, 45, 3, 64
    q, k, v = (torch.randn(b, s, h, d, dtype=torch.float16).transpose(1, 2) for _ in range(3))  # (B,H,S,D) views
    assert not q.is_contiguous()
    out = attention_fwd(q, k, v, CONFIGS[1], causal=True, sm_scale=0.3)
    ref = attention_naive(q, k, v, causal=True, sm_scale=0.3)
    assert check(out, ref, "float16").passed


def test_reference_matches_naive_formula():
    q, k, v = make_inputs(Point(2, 3, 40, 32, True), "cpu")
    torch.testing.assert_close(attention_reference(q, k, v, causal=True), attention_naive(q, k, v, causal=True),
                               atol=1e-5, rtol=1e-5)


def test_planted_large_values_overflow_a_naive_softmax():
    # The inputs must be hostile: without the running max, exp of these logits overflows fp32.
    q, k, _ = make_inputs(Point(1, 1, 77, 64), "cpu")
    logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(64)
    assert torch.isinf(torch.exp(logits)).any()


@pytest.mark.parametrize("bad, match", [
    (dict(shape=(2, 3, 8)), "must all be"),
    (dict(dtype=torch.float32), "dtype"),
    (dict(d=512), "head dim"),
], ids=["3d", "fp32", "d512"])
def test_unsupported_inputs_raise_typed_errors(bad, match):
    shape = bad.get("shape", (1, 2, 8, bad.get("d", 64)))
    q = torch.zeros(shape, dtype=bad.get("dtype", torch.float16))
    with pytest.raises(KernelInputError, match=match):
        attention_fwd(q, q, q, CONFIGS[0])


@pytest.mark.parametrize("config, match", [
    ({**CONFIGS[0], "BLOCK_M": 10**9}, "BLOCK_M"),
    ({**CONFIGS[0], "BLOCK_X": 3}, "unknown"),
    ({**CONFIGS[0], "num_warps": 3}, "num_warps"),
], ids=["huge-block", "unknown-key", "odd-warps"])
def test_bad_configs_raise_typed_errors(config, match):
    q = torch.zeros(1, 1, 8, 16, dtype=torch.float16)
    with pytest.raises(KernelInputError, match=match):
        attention_fwd(q, q, q, config)


def test_torch_dtype_names():
    assert torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="unsupported dtype"):
        torch_dtype("float64")
