"""Search spaces: TOML data, generators, named rules that prune before compiling."""

import pytest

from flashcore.autotune import PROFILES, Point, get_grid
from flashcore.search_spaces import RULES, SpaceError, expand
from flashcore.kernels import load_space
from flashcore.kernels.attention_fwd.rules import (heads_first_needs_query_blocks, persistent_needs_waves,
                                                  reverse_needs_causal, tma_needs_aligned_rows,
                                                  warp_specialize_needs_8_warps)
from flashcore.search_spaces.rules import (register_budget, registers_per_thread, shared_bytes, shared_memory_budget,
                                           warpgroups_own_rows)

H100 = PROFILES["h100"]


def test_generators_expand():
    assert expand("x", {"pow2": [16, 128]}) == (16, 32, 64, 128)
    assert expand("x", {"range": [1, 5, 2]}) == (1, 3, 5)
    assert expand("x", [True, False]) == (True, False)


@pytest.mark.parametrize("spec", [[], {"pow2": [0, 4]}, {"range": [1, 5, 0]}, {"cube": [1, 2]}, "64"],
                         ids=["empty", "pow2-zero", "range-step0", "unknown-gen", "string"])
def test_bad_generators_are_named(spec):
    with pytest.raises(SpaceError, match="parameter BLOCK_M"):
        expand("BLOCK_M", spec)


def test_unknown_kernel_space():
    with pytest.raises(SpaceError, match="no search space"):
        load_space("nope")


@pytest.mark.parametrize("grid", ["small", "heads", "long"])
def test_every_h100_grid_point_has_candidates_and_a_valid_default(grid):
    space = load_space("attention_fwd")
    for point in get_grid(grid):
        assert len(space.candidates(point, H100)) >= 8, point.label
        assert not space.violations(space.default_for(point, H100), point, H100), point.label


def test_rules_are_named_and_listed():
    space = load_space("attention_fwd")
    assert set(space.rule_names) <= set(RULES)
    fp8 = load_space("attention_fp8")
    others = set(load_space("attention_kv").rule_names) | set(load_space("attention_gluon").rule_names)
    assert set(space.rule_names) | set(fp8.rule_names) | others == set(RULES)  # every rule written is applied
    assert {name for name in RULES if name.startswith("fp8_")} <= set(fp8.rule_names) - set(space.rule_names)
    assert "shared_memory_budget" in space.rule_names


def _cfg(**kw):
    return {**dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2, CAUSAL_SPLIT=False, LOADS="pointer",
                   WARP_SPECIALIZE=False, HEADS_FIRST=False, REVERSE=False, PERSISTENT=False), **kw}


def test_every_h100_long_point_offers_each_searched_variant():
    space = load_space("attention_fwd")
    for point in get_grid("long"):
        cands = space.candidates(point, H100)
        for name, values in space.param_values.items():
            if name in ("LOADS", "WARP_SPECIALIZE", "HEADS_FIRST", "PERSISTENT") or (name == "REVERSE" and point.causal):
                assert {c[name] for c in cands} == set(values), (point.label, name)
        assert any(c["BLOCK_M"] == 128 and c["num_warps"] == 8 for c in cands), point.label


def test_shared_memory_rule_rejects_big_tiles_with_many_stages():
    point = Point(4, 16, 8192, 128)
    big = dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=4, CAUSAL_SPLIT=False)
    assert "shared memory" in shared_memory_budget(big, point, H100)
    assert shared_memory_budget({**big, "num_stages": 2}, point, H100) is None
    assert shared_memory_budget(big, point, PROFILES["cpu"]) is None  # the interpreter has no such limit


@pytest.mark.parametrize("loads", ["device_tma", "host_tma"])
def test_shared_memory_rule_counts_tma_barriers(loads):
    point = Point(4, 16, 8192, 128)
    assert shared_bytes(_cfg(LOADS=loads), point) == shared_bytes(_cfg(), point) + 1024
    # measured on the H100: M128 N128 s3 at D=128 fits with pointer loads (229376 B) and with TMA (230400 B)
    assert shared_memory_budget(_cfg(BLOCK_N=128, num_stages=3, LOADS=loads), point, H100) is None
    assert shared_memory_budget(_cfg(BLOCK_N=128, num_stages=4, LOADS=loads), point, H100)


# Each case as the H100 compiled it (registers, spilled bytes) for the pointer or device-TMA kernel.
@pytest.mark.parametrize("config, point, ok", [
    (_cfg(BLOCK_M=128, BLOCK_N=128, num_warps=8), Point(4, 16, 8192, 128), True),                # 255, 0
    (_cfg(BLOCK_M=128, BLOCK_N=128, num_warps=4), Point(4, 16, 8192, 128), False),               # 255, 194
    (_cfg(BLOCK_M=128, BLOCK_N=64, num_warps=4), Point(4, 16, 8192, 128), False),                # 255, 42
    (_cfg(BLOCK_M=128, BLOCK_N=64, num_warps=4, LOADS="device_tma"), Point(4, 16, 8192, 128), True),  # 255, 10
    (_cfg(BLOCK_M=256, BLOCK_N=64, num_warps=8), Point(4, 16, 8192, 64), True),                  # 251, 0
    (_cfg(BLOCK_M=256, BLOCK_N=128, num_warps=8), Point(4, 16, 8192, 128), False),               # 255, 144
    (_cfg(BLOCK_M=256, BLOCK_N=32, num_warps=4, LOADS="device_tma"), Point(4, 16, 8192, 128), False),  # 255, 240
], ids=["M128-N128-w8-D128", "M128-N128-w4-D128", "M128-N64-w4-D128", "M128-N64-w4-D128-tma", "M256-N64-w8-D64",
        "M256-N128-w8-D128", "M256-N32-w4-D128-tma"])
def test_register_rule(config, point, ok):
    assert (register_budget(config, point, H100) is None) == ok, registers_per_thread(config, point)


def test_warpgroup_rule_only_on_the_gpu():
    point = Point(4, 16, 8192, 64)
    assert "warpgroups" in warpgroups_own_rows(_cfg(BLOCK_M=64, num_warps=8), point, H100)
    assert warpgroups_own_rows(_cfg(BLOCK_M=128, num_warps=8), point, H100) is None
    assert warpgroups_own_rows(_cfg(BLOCK_M=32, num_warps=4), point, H100) is None
    assert warpgroups_own_rows(_cfg(BLOCK_M=64, num_warps=8), point, PROFILES["cpu"]) is None


@pytest.mark.parametrize("d, dtype, ok", [(64, "float16", True), (80, "bfloat16", True), (20, "float16", False),
                                          (36, "bfloat16", False)])
def test_tma_rule_needs_16_byte_rows(d, dtype, ok):
    point = Point(1, 2, 300, d, dtype=dtype)
    for loads in ("device_tma", "host_tma"):
        assert (tma_needs_aligned_rows(_cfg(LOADS=loads), point, H100) is None) == ok
    assert tma_needs_aligned_rows(_cfg(), point, H100) is None


def test_tma_needs_long_sequences():
    from flashcore.kernels.attention_fwd.rules import tma_needs_long_sequences

    for loads in ("device_tma", "host_tma"):
        assert "S=512" in tma_needs_long_sequences(_cfg(LOADS=loads), Point(32, 8, 512, 64), H100)
        assert tma_needs_long_sequences(_cfg(LOADS=loads), Point(8, 16, 1024, 64), H100) is None
        assert tma_needs_long_sequences(_cfg(LOADS=loads), Point(1, 2, 50, 64), PROFILES["cpu"]) is None
    assert tma_needs_long_sequences(_cfg(), Point(32, 8, 512, 64), H100) is None


def test_reverse_needs_causal():
    assert reverse_needs_causal(_cfg(REVERSE=True), Point(1, 2, 300, 64, False), H100)
    assert reverse_needs_causal(_cfg(REVERSE=True), Point(1, 2, 300, 64, True), H100) is None


def test_warp_specialize_needs_8_warps_on_the_gpu():
    point = Point(4, 16, 8192, 64)
    assert "num_warps=8" in warp_specialize_needs_8_warps(_cfg(WARP_SPECIALIZE=True, num_warps=4), point, H100)
    assert warp_specialize_needs_8_warps(_cfg(WARP_SPECIALIZE=True), point, H100) is None
    assert warp_specialize_needs_8_warps(_cfg(WARP_SPECIALIZE=True, num_warps=4), point, PROFILES["cpu"]) is None


def test_heads_first_needs_two_query_blocks():
    assert heads_first_needs_query_blocks(_cfg(HEADS_FIRST=True, BLOCK_M=128), Point(8, 8, 128, 64), H100)
    assert heads_first_needs_query_blocks(_cfg(HEADS_FIRST=True, BLOCK_M=64), Point(8, 8, 128, 64), H100) is None
    assert heads_first_needs_query_blocks(_cfg(BLOCK_M=128), Point(8, 8, 128, 64), H100) is None


def test_persistent_needs_more_tiles_than_sms():
    cfg = _cfg(PERSISTENT=True, BLOCK_M=128)
    assert "132 SMs" in persistent_needs_waves(cfg, Point(8, 8, 128, 64), H100)  # 64 tiles
    assert persistent_needs_waves(cfg, Point(32, 8, 512, 64), H100) is None       # 1024 tiles
    assert persistent_needs_waves(_cfg(BLOCK_M=128), Point(8, 8, 128, 64), H100) is None


def test_violations_name_the_rule():
    point = Point(1, 1, 40, 64)  # non-causal, short
    bad = dict(BLOCK_M=128, BLOCK_N=32, num_warps=4, num_stages=2, CAUSAL_SPLIT=True)
    names = {v.split(":")[0] for v in load_space("attention_fwd").violations(bad, point, H100)}
    assert names == {"causal_split_needs_causal", "tile_within_sequence"}


def test_cpu_profile_overrides_the_space():
    cpu = load_space("attention_fwd", "cpu")
    assert cpu.param_values["num_stages"] == (1,)
    assert cpu.param_values["BLOCK_M"] == (16, 32, 64)
    # the interpreter runs every variant (tests/test_kernel.py) but cannot time them: not searched there
    assert cpu.param_values["LOADS"] == ("pointer",)
    assert all(cpu.param_values[k] == (False,) for k in ("WARP_SPECIALIZE", "HEADS_FIRST", "REVERSE", "PERSISTENT"))
    gpu = load_space("attention_fwd")
    assert gpu.param_values["num_stages"] == (2, 3, 4)


@pytest.mark.parametrize("profile", ["default", "cpu"])
def test_default_is_the_safe_pointer_kernel(profile):
    default = dict(load_space("attention_fwd", profile).default)
    assert default["LOADS"] == "pointer"
    assert not any(default[k] for k in ("WARP_SPECIALIZE", "HEADS_FIRST", "REVERSE", "PERSISTENT"))
