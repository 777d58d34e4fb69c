"""Search spaces: TOML data, generators, named rules that prune before compiling."""

import pytest

from autotune import PROFILES, Point, get_grid
from search_spaces import RULES, SpaceError, expand, load_space
from search_spaces.rules import shared_memory_budget

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
    assert "shared_memory_budget" in space.rule_names


def test_shared_memory_rule_rejects_big_tiles_with_many_stages():
    point = Point(4, 16, 8192, 128)
    big = dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=4, CAUSAL_SPLIT=False)
    assert "shared memory" in shared_memory_budget(big, point, H100)
    assert shared_memory_budget({**big, "num_stages": 2}, point, H100) is None
    assert shared_memory_budget(big, point, PROFILES["cpu"]) is None  # the interpreter has no such limit


def test_violations_name_the_rule():
    point = Point(1, 1, 40, 64)  # non-causal, short
    bad = dict(BLOCK_M=128, BLOCK_N=32, num_warps=4, num_stages=2, CAUSAL_SPLIT=True)
    names = {v.split(":")[0] for v in load_space("attention_fwd").violations(bad, point, H100)}
    assert names == {"causal_split_needs_causal", "tile_within_sequence"}


def test_cpu_profile_overrides_the_space():
    cpu = load_space("attention_fwd", "cpu")
    assert cpu.param_values["num_stages"] == (1,)
    assert cpu.param_values["BLOCK_M"] == (16, 32, 64)
    assert load_space("attention_fwd").param_values["num_stages"] == (1, 2, 3, 4, 5)
