"""The Triton kernel against the fp32 reference, over odd shapes, both masks, every config shape."""

import math

import pytest
import torch

from flashcore.autotune import check
from flashcore.autotune.core.problem import torch_dtype
from flashcore.autotune.tuning.inputs import make_inputs
from flashcore.autotune.core.problem import Point
from flashcore.kernels import KernelInputError
from flashcore.kernels.attention_fwd.launch import CONFIG_KEYS, attention_fwd, tma_ready
from flashcore.kernels.reference import attention_naive, attention_reference

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
# The variants: the interpreter runs both kinds of tensor descriptors (bounds and zero fill included), every
# tile order and the persistent loop (3 programs there, so each program loops over several tiles);
# warp specialization is a compiler hint it ignores, so it is only checked to be accepted.
VARIANTS = {
    "device-tma": dict(LOADS="device_tma"),
    "host-tma": dict(LOADS="host_tma"),
    "heads-first": dict(HEADS_FIRST=True),
    "reverse": dict(REVERSE=True),
    "persistent": dict(PERSISTENT=True),
    "persistent-heads-first-reverse": dict(PERSISTENT=True, HEADS_FIRST=True, REVERSE=True),
    "host-tma-persistent": dict(LOADS="host_tma", PERSISTENT=True),
    "device-tma-persistent-heads-first": dict(LOADS="device_tma", PERSISTENT=True, HEADS_FIRST=True),
    "warp-specialize": dict(WARP_SPECIALIZE=True),
}
VARIANT_SHAPES = [(1, 3, 77, 64, True), (2, 1, 50, 32, True), (1, 2, 33, 80, False), (1, 1, 1, 64, True),
                  (3, 5, 17, 16, False)]


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


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", VARIANT_SHAPES, ids=[shape_id(*s) for s in VARIANT_SHAPES])
def test_variants_match_fp32_reference(shape, variant):
    point = Point(*shape)
    for base in (CONFIGS[1], CONFIGS[2]):  # BLOCK_N > BLOCK_M and BLOCK_N < BLOCK_M
        config = {**base, "CAUSAL_SPLIT": point.causal, **VARIANTS[variant]}
        out, ref = _run(point, config)
        verdict = check(out, ref, point.dtype)
        assert verdict.passed, f"{config}: {verdict.reason}"


@pytest.mark.parametrize("variant", ["device-tma", "host-tma-persistent"])
def test_variants_in_bfloat16(variant):
    point = Point(1, 3, 77, 64, True, dtype="bfloat16")
    out, ref = _run(point, {**CONFIGS[1], **VARIANTS[variant]})
    verdict = check(out, ref, "bfloat16")
    assert verdict.passed, verdict.reason


def _nan_padded(x, extra_rows, extra_cols):
    """``x`` as a view into a NaN-filled buffer with junk rows after each head's S and junk columns past D."""
    b, h, s, d = x.shape
    buf = torch.full((b, h, s + extra_rows, d + extra_cols), float("nan"), dtype=x.dtype)
    buf[:, :, :s, :d] = x
    return buf[:, :, :s, :d]


@pytest.mark.parametrize("variant", ["pointer", "device-tma", "host-tma", "device-tma-persistent-heads-first"])
@pytest.mark.parametrize("shape", [(2, 3, 45, 80, True), (1, 2, 50, 64, False)],
                         ids=["B2-H3-S45-D80-causal", "B1-H2-S50-D64-full"])
def test_nothing_past_a_head_is_read(shape, variant):
    # Rows past S (before the next head) and columns past D hold NaN: a load that strays there (a descriptor
    # bounded by the whole tensor instead of the head, a missing mask) turns the output into NaN.
    point = Point(*shape)
    q, k, v = (_nan_padded(x, 5, 8) for x in make_inputs(point, "cpu"))
    assert tma_ready(q)  # strides stay 16-byte aligned: the descriptor path reads these views, no copy
    ref = attention_reference(*(x.contiguous() for x in (q, k, v)), causal=point.causal)
    config = {**CONFIGS[1], "CAUSAL_SPLIT": point.causal, **VARIANTS.get(variant, {})}
    out = torch.full_like(q, float("nan"))
    attention_fwd(q, k, v, config, causal=point.causal, out=out)
    verdict = check(out, ref, point.dtype)
    assert verdict.passed, verdict.reason


@pytest.mark.parametrize("loads", ["device_tma", "host_tma"])
@pytest.mark.parametrize("layout", ["misaligned-base", "rows-not-16-bytes"])
def test_tma_on_inputs_descriptors_cannot_take(layout, loads):
    # A base off 16 bytes is copied first; a head dim whose rows are not 16 bytes (D=20) runs pointer loads.
    d = 64 if layout == "misaligned-base" else 20
    point = Point(1, 2, 37, d, True)
    q, k, v = make_inputs(point, "cpu")
    if layout == "misaligned-base":
        q = torch.cat([torch.zeros(1, dtype=q.dtype), q.flatten()])[1:].view(q.shape)
        assert not tma_ready(q)
    out = attention_fwd(q, k, v, {**CONFIGS[1], "LOADS": loads, "PERSISTENT": True}, causal=True)
    assert check(out, attention_reference(q, k, v, causal=True), "float16").passed


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
    (dict(shape=(2, 3, 8)), r"must be \(B, Hq, L, D\)"),
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
    ({**CONFIGS[0], "TMA": True}, "unknown"),
    ({**CONFIGS[0], "num_warps": 3}, "num_warps"),
    ({**CONFIGS[0], "num_stages": True}, "num_stages"),
    ({**CONFIGS[0], "LOADS": "descriptor"}, "LOADS"),
    ({**CONFIGS[0], "PERSISTENT": 1}, "PERSISTENT"),
    ({**CONFIGS[0], "HEADS_FIRST": None}, "HEADS_FIRST"),
    ({**CONFIGS[0], "WARP_SPECIALIZE": "yes"}, "WARP_SPECIALIZE"),
], ids=["huge-block", "unknown-key", "tma-key", "odd-warps", "bool-stages", "loads-value", "persistent-int",
        "heads-first-none", "ws-string"])
def test_bad_configs_raise_typed_errors(config, match):
    q = torch.zeros(1, 1, 8, 16, dtype=torch.float16)
    with pytest.raises(KernelInputError, match=match):
        attention_fwd(q, q, q, config)


def test_config_keys_are_the_search_space_parameters():
    from flashcore.kernels import load_space

    for profile in ("default", "cpu"):
        assert set(load_space("attention_fwd", profile).param_values) == CONFIG_KEYS


def test_out_of_another_shape_is_refused():
    q = torch.zeros(1, 1, 8, 16, dtype=torch.float16)
    with pytest.raises(KernelInputError, match="out must be"):
        attention_fwd(q, q, q, CONFIGS[0], out=torch.empty(1, 1, 9, 16, dtype=torch.float16))


def test_torch_dtype_names():
    assert torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="unsupported dtype"):
        torch_dtype("float64")
