"""On the GPU: the compiled kernel against fp32 over odd shapes and every config of the space at one point,
a real sweep on the device's profile, and get_kernel serving its winner. Skipped without CUDA.

Tiers (tests/_tiers.py): the fast tier keeps a sample of each shape and variant list (both masks, D 64 and 128,
both dtypes, every TMA layout and single-token variant once); the long shape, the whole-space check and the
torch.compile opcheck run under `-m gpu` only (marked slow)."""

import pytest
import torch

from flashcore import autotune
from flashcore.autotune import Point, check, get_kernel, resolve_profile
from flashcore.autotune.tuning.inputs import make_inputs
from flashcore.autotune.tuning.sweep import tune_point
from flashcore.cache import CacheStore
from flashcore.kernels import KernelError
from flashcore.kernels.attention_fwd.launch import attention_fwd, compile_info, tma_ready
from flashcore.kernels.reference import attention_reference
from flashcore.kernels import load_space
from flashcore.autotune.tuning.options import SweepOptions

from _shapes import shape_id
from _tiers import tiered

pytestmark = pytest.mark.gpu

SHAPES = [(1, 3, 77, 64, False), (2, 5, 1000, 64, True), (1, 2, 333, 128, True), (2, 1, 1, 64, False),
          (1, 4, 2049, 128, False), (1, 2, 200, 80, True), (1, 1, 32768, 128, True)]


SHAPE_CASES = [(shape, dtype) for dtype in ("float16", "bfloat16") for shape in SHAPES]


@pytest.mark.parametrize("shape, dtype", tiered(
    SHAPE_CASES, [f"{shape_id(*s)}-{d}" for s, d in SHAPE_CASES],
    fast=["B2-H5-S1000-D64-causal-float16-float16", "B1-H4-S2049-D128-full-float16-bfloat16"], unpack=True))
def test_compiled_kernel_matches_fp32(shape, dtype):
    point = Point(*shape, dtype=dtype)
    profile = resolve_profile("auto")
    space = load_space("attention_fwd")
    q, k, v = make_inputs(point, "cuda")
    ref = attention_reference(q, k, v, causal=point.causal)
    for config in (space.default_for(point, profile),
                   dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, CAUSAL_SPLIT=point.causal),
                   dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=2, CAUSAL_SPLIT=point.causal),
                   dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=2, CAUSAL_SPLIT=point.causal,
                        LOADS="device_tma"),
                   dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, CAUSAL_SPLIT=point.causal,
                        LOADS="host_tma", WARP_SPECIALIZE=True),
                   dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, CAUSAL_SPLIT=point.causal,
                        LOADS="host_tma", PERSISTENT=True, HEADS_FIRST=True, REVERSE=True),
                   dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=4, CAUSAL_SPLIT=point.causal,
                        PERSISTENT=True, REVERSE=point.causal)):
        out = torch.full_like(q, float("nan"))
        attention_fwd(q, k, v, config, causal=point.causal, out=out)
        verdict = check(out, ref, dtype)
        assert verdict.passed, f"{config}: {verdict.reason}"


GQA_SHAPES = [(3, 6, 2, 77, 64, True), (2, 32, 8, 1000, 128, True), (1, 7, 1, 333, 128, False),
              (2, 28, 4, 2049, 128, True)]


GQA_CASES = [(shape, dtype) for dtype in ("float16", "bfloat16") for shape in GQA_SHAPES]


@pytest.mark.parametrize("shape, dtype", tiered(
    GQA_CASES, [f"B{b}-H{h}kv{kv}-S{s}-D{d}-{'causal' if c else 'full'}-{dtype}"
                for (b, h, kv, s, d, c), dtype in GQA_CASES],
    fast=["B2-H32kv8-S1000-D128-causal-bfloat16", "B1-H7kv1-S333-D128-full-float16"], unpack=True))
def test_grouped_query_heads_compiled_match_fp32(shape, dtype):
    b, h, kv, s, d, causal = shape
    point = Point(b, h, s, d, causal, dtype, kv_heads=kv)
    q, k, v = make_inputs(point, "cuda")
    ref = attention_reference(q, k, v, causal=causal)
    for config in (load_space("attention_fwd").default_for(point, resolve_profile("auto")),
                   dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, CAUSAL_SPLIT=causal),
                   dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=2, CAUSAL_SPLIT=causal, LOADS="device_tma"),
                   dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, CAUSAL_SPLIT=causal, LOADS="host_tma",
                        WARP_SPECIALIZE=True)):  # host TMA runs as device TMA with grouped heads
        out = torch.full_like(q, float("nan"))
        attention_fwd(q, k, v, config, causal=causal, out=out)
        verdict = check(out, ref, dtype)
        assert verdict.passed, f"{config}: {verdict.reason}"


def _covering(candidates):
    """A subset of the space that still holds every tile shape with every mask and load path, every variant
    switch with two tile shapes, and every warps/stages pair: the first candidate of each such combination
    (the whole space is several hundred compiles at a point)."""
    keys = [lambda c: (c["BLOCK_M"], c["BLOCK_N"], c["CAUSAL_SPLIT"], c["LOADS"]),
            lambda c: (c["LOADS"], c["WARP_SPECIALIZE"], c["HEADS_FIRST"], c["REVERSE"], c["PERSISTENT"]),
            lambda c: (c["num_warps"], c["num_stages"], c["LOADS"], c["WARP_SPECIALIZE"])]
    picked = {}
    for key in keys:
        seen = set()
        for c in candidates:
            if key(c) not in seen:
                seen.add(key(c))
                picked[tuple(sorted(c.items()))] = c
    return list(picked.values())


@pytest.mark.slow  # tens of compiles per mask
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_every_valid_config_is_correct_or_fails_typed(causal):
    # The anchors saw a causal two-loop kernel silently wrong for BLOCK_N > BLOCK_M; ours must be right for all.
    point = Point(2, 3, 1100, 64, causal)  # S >= 1024: the TMA configs are candidates too
    profile = resolve_profile("auto")
    space = load_space("attention_fwd")
    q, k, v = make_inputs(point, "cuda")
    ref = attention_reference(q, k, v, causal=causal)
    wrong = []
    for config in _covering(space.candidates(point, profile)):
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


TMA_CONFIGS = {
    "device-tma": dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=2, LOADS="device_tma"),
    "host-tma": dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, LOADS="host_tma"),
    "device-tma-persistent-heads-first": dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=2,
                                              LOADS="device_tma", PERSISTENT=True, HEADS_FIRST=True),
    "host-tma-persistent-ws": dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2, LOADS="host_tma",
                                   PERSISTENT=True, WARP_SPECIALIZE=True),
}


def _nan_padded(x, extra_rows, extra_cols):
    b, h, s, d = x.shape
    buf = torch.full((b, h, s + extra_rows, d + extra_cols), float("nan"), dtype=x.dtype, device=x.device)
    buf[:, :, :s, :d] = x
    return buf[:, :, :s, :d]


LAYOUT_CASES = [(layout, variant) for variant in TMA_CONFIGS
                for layout in ("nan-padded", "bshd-view", "misaligned-base", "d20-fallback")]


@pytest.mark.parametrize("layout, variant", tiered(  # fast: each layout once, each variant once
    LAYOUT_CASES, [f"{layout}-{variant}" for layout, variant in LAYOUT_CASES],
    fast=["nan-padded-device-tma", "bshd-view-host-tma", "misaligned-base-device-tma-persistent-heads-first",
          "d20-fallback-host-tma-persistent-ws"], unpack=True))
def test_tma_layouts(layout, variant):
    # Descriptors are bounded per (batch, head): NaN rows past S and NaN columns past D are never read;
    # a (B, S, H, D) view is used in place; an unaligned base is copied; D=20 falls back to pointer loads.
    shape = {"nan-padded": (2, 3, 333, 80, True), "bshd-view": (2, 5, 200, 64, True),
             "misaligned-base": (1, 2, 100, 64, False), "d20-fallback": (1, 2, 100, 20, True)}[layout]
    point = Point(*shape)
    q, k, v = make_inputs(point, "cuda")
    ref = attention_reference(q, k, v, causal=point.causal)
    if layout == "nan-padded":
        q, k, v = (_nan_padded(x, 7, 8) for x in (q, k, v))
        assert tma_ready(q)
    elif layout == "bshd-view":
        q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
        assert not q.is_contiguous() and tma_ready(q)
    elif layout == "misaligned-base":
        q = torch.cat([q.new_zeros(1), q.flatten()])[1:].view(q.shape)
        assert not tma_ready(q)
    out = torch.full_like(ref, float("nan"), dtype=q.dtype)
    attention_fwd(q, k, v, {**TMA_CONFIGS[variant], "CAUSAL_SPLIT": point.causal}, causal=point.causal, out=out)
    verdict = check(out, ref, "float16")
    assert verdict.passed, verdict.reason


SINGLE_TOKEN_CONFIGS = {
    "pointer-M128-w8": dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    "device-tma-M128-w8": dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, LOADS="device_tma"),
    "device-tma-persistent-heads-first": dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2,
                                              LOADS="device_tma", PERSISTENT=True, HEADS_FIRST=True),
    "host-tma-ws": dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, LOADS="host_tma",
                        WARP_SPECIALIZE=True),
    "pointer-persistent-M64-s4": dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=4, PERSISTENT=True),
}


TOKEN_CASES = [(name, causal) for causal in (False, True) for name in SINGLE_TOKEN_CONFIGS]


@pytest.mark.parametrize("name, causal", tiered(  # fast: every variant once, the masks alternating
    TOKEN_CASES, [f"{name}-{'causal' if causal else 'full'}" for name, causal in TOKEN_CASES],
    fast=["pointer-M128-w8-causal", "device-tma-M128-w8-full", "device-tma-persistent-heads-first-causal",
          "host-tma-ws-full", "pointer-persistent-M64-s4-causal"], unpack=True))
def test_single_token_every_variant(name, causal):
    # S=1 is specialised by Triton (an int argument equal to 1 becomes a constant): every variant must still
    # compile and be right, because get_kernel may serve any tuned config at a point of another length.
    point = Point(2, 3, 1, 64, causal)
    q, k, v = make_inputs(point, "cuda")
    out = torch.full_like(q, float("nan"))
    attention_fwd(q, k, v, {**SINGLE_TOKEN_CONFIGS[name], "CAUSAL_SPLIT": causal}, causal=causal, out=out)
    verdict = check(out, attention_reference(q, k, v, causal=causal), "float16")
    assert verdict.passed, verdict.reason


def test_tma_launch_from_a_new_thread_sets_its_allocator():
    # Triton keeps its allocator in a ContextVar: a thread that never launched must get one too.
    import threading

    point = Point(1, 2, 300, 64, True)
    q, k, v = make_inputs(point, "cuda")
    result = {}

    def work():
        try:
            result["out"] = attention_fwd(q, k, v, {**TMA_CONFIGS["device-tma"], "CAUSAL_SPLIT": True}, causal=True)
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert "error" not in result, result.get("error")
    assert check(result["out"], attention_reference(q, k, v, causal=True), "float16").passed


@pytest.mark.parametrize("config", [
    dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2, CAUSAL_SPLIT=True),
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, CAUSAL_SPLIT=True, LOADS="device_tma"),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, CAUSAL_SPLIT=True, LOADS="host_tma"),
], ids=["default", "M128-N128-device-tma", "M128-N64-host-tma"])
def test_configs_the_rules_accept_compile_without_spills(config):
    from flashcore.kernels import load_space as _load

    point = Point(4, 16, 8192, 128, True)
    profile = resolve_profile("auto")
    assert not _load("attention_fwd").violations(config, point, profile)
    q, k, v = (torch.empty(1, 16, 1024, 128, dtype=torch.float16, device="cuda") for _ in range(3))
    info = compile_info(q, k, v, config, causal=True)
    assert info["spills"] == 0 and info["shared"] <= profile.smem_bytes, info


def test_sweep_one_point_and_serve_it(tmp_path):
    profile = resolve_profile("auto")
    point = Point(4, 8, 512, 64, True)
    path = tmp_path / "gpu.db"
    with CacheStore.open(path) as store:
        res = tune_point(point, store, SweepOptions(profile=profile, trials=4, seed=0, rep_ms=20))
    assert res.best is not None and res.best.rel_err < 2e-3
    kernel = get_kernel((4, 8, 512, 64), causal=True, db=path)
    assert kernel.source == "exact" and kernel.config == res.best.config
    q, k, v = make_inputs(point, "cuda")
    assert check(kernel(q, k, v), attention_reference(q, k, v, causal=True), "float16").passed


@pytest.mark.slow  # torch.compile and opcheck; the fast tier compiles the served op in tests/test_gpu_serving.py
def test_drop_in_op_under_torch_compile_fullgraph_matches_eager():
    import flashcore.autotune

    point = Point(2, 8, 1000, 64, True)
    q, k, v = make_inputs(point, "cuda")

    def layer(q, k, v):
        return autotune.attention(q, k, v, is_causal=True)

    eager = layer(q, k, v)
    compiled = torch.compile(layer, fullgraph=True)(q, k, v)
    ref = attention_reference(q, k, v, causal=True)
    assert check(eager, ref, "float16").passed and check(compiled, ref, "float16").passed
    torch.library.opcheck(torch.ops.flashcore.attention.default, (q, k, v, True, None))
