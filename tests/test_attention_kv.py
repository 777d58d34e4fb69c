"""attention_kv (L != S, grouped-query heads, packing, split-KV) against SDPA in fp32, in Triton's interpreter;
its typed errors; and its search space and rules on the decode grid."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from flashcore.autotune import PROFILES, check
from flashcore.kernels import KernelInputError
from flashcore.kernels.attention_kv import launch as kv_launch
from flashcore.kernels.attention_kv.launch import CONFIG_KEYS, attention_kv
from flashcore.kernels.reference import attention_naive, attention_reference
from flashcore.kernels import load_space

MASKS = {"full": (False, False), "causal_tl": (True, False), "causal_lr": (True, True)}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def case_id(b, hq, hkv, lq, s, d, mask, dtype="float16"):
    return f"B{b}-H{hq}kv{hkv}-L{lq}-S{s}-D{d}-{mask}" + ("" if dtype == "float16" else f"-{dtype}")


def make_kv_inputs(b, hq, hkv, lq, s, d, dtype="float16", seed=0):
    """N(0, 1) q (B, Hq, L, D), k and v (B, Hkv, S, D), seeded by the shape, with planted large values: query
    rows 0 and L-1 and key rows S//2 and S-1 x8 (logits far past exp's range without the running max), the
    value row (S-1)//2 x4."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{b},{hq},{hkv},{lq},{s},{d}".encode()))
    q = torch.randn(b, hq, lq, d, generator=gen)
    k, v = (torch.randn(b, hkv, s, d, generator=gen) for _ in range(2))
    q[:, :, sorted({0, lq - 1})] *= 8.0
    k[:, :, sorted({s // 2, s - 1})] *= 8.0
    v[:, :, (s - 1) // 2] *= 4.0
    return tuple(x.to(DTYPES[dtype]) for x in (q, k, v))


def sdpa_truth(q, k, v, mask, sm_scale=None):
    """SDPA in fp32 with enable_gqa: is_causal for top-left, causal_lower_right(L, S) for bottom-right."""
    causal, lower_right = MASKS[mask]
    qf, kf, vf = q.float(), k.float(), v.float()
    if lower_right:
        return F.scaled_dot_product_attention(qf, kf, vf, attn_mask=causal_lower_right(q.shape[2], k.shape[2]),
                                              scale=sm_scale, enable_gqa=True)
    return F.scaled_dot_product_attention(qf, kf, vf, is_causal=causal, scale=sm_scale, enable_gqa=True)


@pytest.fixture(autouse=True)
def _nan_workspace(monkeypatch):
    """Every split-KV workspace starts as NaN: a partial (output or LSE) a program fails to write, an empty
    split included, reaches the output as NaN and fails the gate."""
    real = kv_launch.alloc_partials

    def poisoned(q, num_splits):
        parts = real(q, num_splits)
        if parts is not None:
            for p in parts:
                p.fill_(float("nan"))
        return parts

    monkeypatch.setattr(kv_launch, "alloc_partials", poisoned)


def run_case(shape, mask, config, dtype="float16", **kw):
    q, k, v = make_kv_inputs(*shape, dtype=dtype)
    causal, lower_right = MASKS[mask]
    out = torch.full_like(q, float("nan"))
    result = attention_kv(q, k, v, config, causal=causal, lower_right=lower_right, out=out, **kw)
    assert result is out
    return out, sdpa_truth(q, k, v, mask, kw.get("sm_scale"))


def cfg(bm, bn, splits, pack):
    return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=4, num_stages=1, NUM_SPLITS=splits, PACK_GQA=pack)


# (B, Hq, Hkv, L, S, D), masks. Decode (L 1, 3, 16), odd S, groups 1, 4, 7, D not a power of two, top-left
# with L > S, lower-right with L == S, a prefill chunk spanning several query tiles, and a single key.
CASES = [
    ((2, 8, 2, 3, 77, 64), ("full", "causal_tl", "causal_lr")),
    ((1, 7, 1, 16, 200, 48), ("full", "causal_lr")),
    ((2, 2, 2, 1, 77, 64), ("causal_lr",)),
    ((1, 8, 2, 1, 200, 128), ("full", "causal_lr")),
    ((1, 4, 1, 40, 20, 32), ("causal_tl",)),
    ((1, 2, 1, 33, 33, 64), ("causal_lr",)),
    ((1, 4, 2, 50, 130, 64), ("causal_lr", "causal_tl")),
    ((2, 4, 2, 1, 1, 16), ("causal_lr",)),
    ((1, 4, 2, 3, 1, 16), ("causal_tl",)),
]
PARAMS = [(shape, mask) for shape, masks in CASES for mask in masks]
# NUM_SPLITS 3 (not a power of two: the launcher takes any count) and 8: on S = 77 with BLOCK_N 32 there are
# 3 key blocks, and top-left rows with L = 3 see a single block, so several splits are empty. The last config
# gives the L = 50 chunk tiles of 32 positions whose first rows see nothing of a late split's blocks.
CONFIGS = [cfg(16, 16, 1, False), cfg(16, 32, 3, True), cfg(32, 16, 8, True), cfg(32, 16, 8, False)]


@pytest.mark.parametrize("shape, mask", PARAMS, ids=[case_id(*s, m) for s, m in PARAMS])
def test_matches_sdpa(shape, mask):
    for config in CONFIGS:
        out, ref = run_case(shape, mask, config)
        verdict = check(out, ref, "float16")
        assert verdict.passed, f"{config}: {verdict.reason}"


BF16 = [((2, 8, 2, 3, 77, 64), "causal_lr"), ((1, 7, 1, 16, 200, 48), "full")]


@pytest.mark.parametrize("shape, mask", BF16, ids=[case_id(*s, m, "bfloat16") for s, m in BF16])
def test_matches_sdpa_in_bfloat16(shape, mask):
    for config in (cfg(16, 32, 3, True), cfg(16, 16, 1, False)):
        out, ref = run_case(shape, mask, config, dtype="bfloat16")
        verdict = check(out, ref, "bfloat16")
        assert verdict.passed, f"{config}: {verdict.reason}"


@pytest.mark.parametrize("mask", ["causal_tl", "causal_lr"])
def test_workspace_partials_keep_their_contract(mask, monkeypatch):
    # Captured partials: finite everywhere, PO == 0 exactly where PLSE == -inf (a split a row saw nothing of,
    # wholly empty or past the row's limit), and their direct LSE-weighted merge is the output.
    captured = []
    real = kv_launch.alloc_partials
    monkeypatch.setattr(kv_launch, "alloc_partials", lambda q, n: captured.append(real(q, n)) or captured[-1])
    out, ref = run_case((1, 4, 2, 50, 130, 64), mask, cfg(32, 16, 8, False))
    (po, plse), = captured
    assert torch.isfinite(po).all() and not torch.isnan(plse).any() and not torch.isposinf(plse).any()
    empty = torch.isneginf(plse)
    assert empty.any() and (po[empty] == 0).all()
    w = torch.softmax(plse, dim=0)
    torch.testing.assert_close((w[..., None] * po).sum(0), out.float(), atol=2e-3, rtol=1e-3)
    assert check(out, ref, "float16").passed


def test_kv_cache_layout_views_and_explicit_scale():
    # A cache laid out (B, S, Hkv, D) and read through transposed views; the query likewise.
    torch.manual_seed(1)
    b, hq, hkv, lq, s, d = 2, 6, 2, 5, 90, 64
    q = torch.randn(b, lq, hq, d, dtype=torch.float16).transpose(1, 2)
    k, v = (torch.randn(b, s, hkv, d, dtype=torch.float16).transpose(1, 2) for _ in range(2))
    assert not k.is_contiguous()
    for config in (cfg(16, 32, 3, True), cfg(16, 16, 1, False)):
        out = attention_kv(q, k, v, config, causal=True, lower_right=True, sm_scale=0.3)
        assert check(out, sdpa_truth(q, k, v, "causal_lr", 0.3), "float16").passed


def test_pack_and_no_pack_agree():
    q, k, v = make_kv_inputs(1, 8, 2, 4, 100, 64)
    a = attention_kv(q, k, v, cfg(16, 32, 2, True), causal=True, lower_right=True)
    b = attention_kv(q, k, v, cfg(16, 32, 2, False), causal=True, lower_right=True)
    torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)


def test_reference_matches_sdpa_gqa_and_naive():
    q, k, v = make_kv_inputs(2, 8, 2, 5, 40, 32, dtype="float16")
    for mask, (causal, lower_right) in MASKS.items():
        ref = attention_reference(q, k, v, causal=causal, lower_right=lower_right)
        torch.testing.assert_close(ref, sdpa_truth(q, k, v, mask), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ref, attention_naive(q, k, v, causal=causal, lower_right=lower_right),
                                   atol=1e-5, rtol=1e-5)


def test_masks_differ_so_the_cases_tell_them_apart():
    q, k, v = make_kv_inputs(2, 8, 2, 3, 77, 64)
    outs = [sdpa_truth(q, k, v, m) for m in MASKS]
    for i in range(3):
        for j in range(i):
            assert not check(outs[i], outs[j], "float16").passed


def test_planted_wrong_head_mapping_is_rejected():
    # Query head h reading kv head h % Hkv (instead of h // G) must fail the comparison the tests rely on.
    q, k, v = make_kv_inputs(2, 8, 2, 3, 77, 64)
    out = attention_kv(q, k, v, cfg(16, 32, 3, True), causal=True, lower_right=True)
    wrong = F.scaled_dot_product_attention(q.float(), k.float().repeat(1, 4, 1, 1), v.float().repeat(1, 4, 1, 1),
                                           attn_mask=causal_lower_right(3, 77))
    assert check(out, sdpa_truth(q, k, v, "causal_lr"), "float16").passed
    assert not check(out, wrong, "float16").passed


def test_planted_combine_ignoring_lse_is_rejected(monkeypatch):
    # A combine that averages the split outputs without their LSE weights: the same comparison must fail.
    def average(partial_out, partial_lse, out):
        out.copy_(partial_out.mean(0).to(out.dtype))
        return out

    monkeypatch.setattr(kv_launch, "combine", average)
    out, ref = run_case((1, 8, 2, 1, 200, 128), "causal_lr", cfg(16, 32, 3, True))
    assert not check(out, ref, "float16").passed


def test_planted_large_values_overflow_a_naive_softmax():
    q, k, _ = make_kv_inputs(1, 8, 2, 1, 200, 128)
    logits = q.float() @ k.float().repeat_interleave(4, 1).transpose(-1, -2) / math.sqrt(128)
    assert torch.isinf(torch.exp(logits)).any()


@pytest.mark.parametrize("shapes, kw, match", [
    (((1, 2, 8, 16), (1, 2, 4, 16)), dict(causal=True, lower_right=True), "L <= S"),
    (((1, 3, 4, 16), (1, 2, 8, 16)), {}, "multiple"),
    (((1, 2, 4, 16), (1, 2, 8, 32)), {}, "agree"),
    (((1, 2, 4, 16), (1, 2, 8, 16)), dict(lower_right=True), "causal=True"),
    (((2, 4, 16), (1, 2, 8, 16)), {}, "must be"),
    (((1, 2, 4, 300), (1, 2, 8, 300)), {}, "head dim"),
], ids=["lower-right-L>S", "heads-not-multiple", "d-mismatch", "lr-without-causal", "3d", "d300"])
def test_unsupported_inputs_raise_typed_errors(shapes, kw, match):
    q = torch.zeros(shapes[0], dtype=torch.float16)
    k = torch.zeros(shapes[1], dtype=torch.float16)
    with pytest.raises(KernelInputError, match=match):
        attention_kv(q, k, k, cfg(16, 16, 1, False), **kw)


def test_other_dtype_or_out_is_refused():
    q = torch.zeros(1, 2, 4, 16, dtype=torch.float32)
    with pytest.raises(KernelInputError, match="dtype"):
        attention_kv(q, q, q, cfg(16, 16, 1, False))
    q = q.half()
    with pytest.raises(KernelInputError, match="out must be"):
        attention_kv(q, q, q, cfg(16, 16, 1, False), out=torch.empty(1, 2, 4, 16, dtype=torch.bfloat16))


@pytest.mark.parametrize("change, match", [
    (dict(NUM_SPLITS=0), "NUM_SPLITS"), (dict(NUM_SPLITS=True), "NUM_SPLITS"), (dict(NUM_SPLITS=1000), "NUM_SPLITS"),
    (dict(PACK_GQA=1), "PACK_GQA"), (dict(BLOCK_M=256), "BLOCK_M"), (dict(BLOCK_N=8), "BLOCK_N"),
    (dict(LOADS="pointer"), "unknown"), (dict(num_warps=3), "num_warps"),
], ids=["splits-0", "splits-bool", "splits-1000", "pack-int", "bm-256", "bn-8", "unknown-key", "warps-3"])
def test_bad_configs_raise_typed_errors(change, match):
    q = torch.zeros(1, 2, 4, 16, dtype=torch.float16)
    with pytest.raises(KernelInputError, match=match):
        attention_kv(q, q, q, {**cfg(16, 16, 1, False), **change})


def test_optional_keys_default_to_one_split_unpacked():
    q, k, v = make_kv_inputs(1, 4, 2, 2, 40, 32)
    out = attention_kv(q, k, v, dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1), causal=True, lower_right=True)
    assert check(out, sdpa_truth(q, k, v, "causal_lr"), "float16").passed


# --- search space and rules ---------------------------------------------------------------------------

@dataclass(frozen=True)
class KvPoint:
    batch: int
    heads: int
    kv_heads: int
    seq_len: int
    kv_len: int
    head_dim: int
    causal: bool = True
    lower_right: bool = True
    dtype: str = "float16"


def kv_space(profile: str = "default"):
    return load_space("attention_kv", profile)


def valid_configs(point, profile, space=None) -> list[dict]:
    return (space or kv_space(profile.name)).candidates(point, profile)


def default_for(point, profile, space=None) -> dict:
    return (space or kv_space(profile.name)).default_for(point, profile)


H100 = PROFILES["h100"]
DECODE_HEADS = [(32, 8), (64, 8), (28, 4), (12, 12)]


def test_config_keys_are_the_space_parameters():
    for profile in ("default", "cpu"):
        space = kv_space(profile)
        assert set(space.param_values) == CONFIG_KEYS
        assert all(fn.__doc__ for _, fn in space.rules)


@pytest.mark.parametrize("profile", ["h100", "cpu"])
def test_decode_points_keep_a_valid_space_and_default(profile):
    prof = PROFILES[profile]
    space = kv_space("cpu" if prof.interpreter else "default")
    for b in (1, 4, 16, 128):
        for s in (1024, 8192, 131072):
            for hq, hkv in DECODE_HEADS:
                for d in (64, 128):
                    for lq in (1, 4, 16):
                        point = KvPoint(b, hq, hkv, lq, s, d)
                        assert valid_configs(point, prof, space), point
                        assert not space.violations(default_for(point, prof, space), point, prof), point


def test_splits_follow_the_sm_count_and_the_work():
    small = {c["NUM_SPLITS"] for c in valid_configs(KvPoint(1, 32, 8, 1, 32768, 128), H100)}
    assert max(small) == 64  # 8 packed tiles on 132 SMs: split up to 4 waves
    big = {c["NUM_SPLITS"] for c in valid_configs(KvPoint(128, 32, 8, 1, 32768, 128), H100)}
    assert big == {1}  # 1024+ programs already fill the GPU
    short = valid_configs(KvPoint(1, 32, 8, 1, 256, 128), H100)
    assert all(c["NUM_SPLITS"] * 2 <= -(-256 // c["BLOCK_N"]) for c in short if c["NUM_SPLITS"] > 1)
    tl = valid_configs(KvPoint(1, 32, 8, 1, 32768, 128, lower_right=False), H100)  # row 0 sees key 0 only
    assert {c["NUM_SPLITS"] for c in tl} == {1} and {c["BLOCK_N"] for c in tl} == {16}


def test_packing_needs_groups_and_fills_decode_tiles():
    mha = valid_configs(KvPoint(1, 12, 12, 1, 4096, 64), H100)
    assert not any(c["PACK_GQA"] for c in mha)
    gqa = valid_configs(KvPoint(2, 64, 8, 16, 4096, 64), H100)
    assert max(c["BLOCK_M"] for c in gqa if c["PACK_GQA"]) == 128  # G·L = 128 rows
    assert max(c["BLOCK_M"] for c in gqa if not c["PACK_GQA"]) == 16  # L = 16 rows


def test_default_clips_key_blocks_by_the_cache_not_the_query():
    decode = default_for(KvPoint(1, 32, 8, 1, 32768, 128), H100)
    assert decode["BLOCK_M"] == 16 and decode["BLOCK_N"] == 64
    short = default_for(KvPoint(1, 32, 8, 1, 20, 128), H100)
    assert short["BLOCK_N"] == 32


def test_the_default_splits_the_cache_to_fill_the_gpu_where_the_batch_does_not():
    one = default_for(KvPoint(1, 32, 8, 1, 32768, 128), H100)  # 8 packed tiles on 132 SMs: 64 splits
    assert one["NUM_SPLITS"] == 64 and one["PACK_GQA"]
    assert default_for(KvPoint(128, 32, 8, 1, 32768, 128), H100)["NUM_SPLITS"] == 1  # 1024 tiles fill it
    medium = default_for(KvPoint(1, 32, 8, 1, 2300, 128), H100)  # 36 key blocks: 2 per split at most
    assert medium["NUM_SPLITS"] == 16
    mha = default_for(KvPoint(3, 12, 12, 1, 500, 64), H100)  # no groups to pack; 8 key blocks
    assert not mha["PACK_GQA"] and mha["NUM_SPLITS"] == 4


def test_rules_read_points_without_kv_fields():
    from flashcore.autotune import Point

    point = Point(2, 8, 512, 64, True)  # an attention_fwd point: Hkv = Hq, S = L, top-left
    assert valid_configs(point, H100)
    assert not any(c["PACK_GQA"] for c in valid_configs(point, H100))
