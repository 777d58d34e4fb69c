"""`autotune study-search`: exhaustive timings replayed through the sweep's TPE search and random search.

The replays run on synthetic measurements (fast, exact); the pipeline runs for real on one tiny point through
the library, and through the CLI on the smoke grid (Triton's interpreter: the timings mean nothing, the
pipeline is real)."""

from __future__ import annotations

import itertools
import json
import math

from typer.testing import CliRunner

from flashcore.autotune import PROFILES, Point
from flashcore.autotune.evaluation.study_search import replay_random, replay_tpe, run_study, trials_to_target
from flashcore.autotune.tuning.search import config_id
from flashcore.autotune.cli.app import app

CPU = PROFILES["cpu"]
PARAMS = (("BLOCK_M", (16, 32, 64, 128)), ("BLOCK_N", (16, 32, 64, 128)), ("num_stages", (2, 3)))
NAN = float("nan")


def _measured() -> dict[tuple, float]:
    """A smooth landscape over 24 of the 32 configs (BLOCK_M 16 invalid) with its optimum at M64 N64 s3, and
    two failed configs."""
    out = {}
    for m, n, s in itertools.product((32, 64, 128), (16, 32, 64, 128), (2, 3)):
        value = 100.0 * (1 + abs(math.log2(m / 64)) + abs(math.log2(n / 64)) + (s == 2) * 0.5)
        out[config_id({"BLOCK_M": m, "BLOCK_N": n, "num_stages": s})] = value
    out[config_id({"BLOCK_M": 128, "BLOCK_N": 128, "num_stages": 3})] = NAN
    out[config_id({"BLOCK_M": 32, "BLOCK_N": 16, "num_stages": 2})] = NAN
    return out


def test_trials_to_target():
    assert trials_to_target([150.0, NAN, 103.0, 100.0], 100.0) == 3
    assert trials_to_target([150.0, NAN, 104.0, 100.0], 100.0) == 4
    assert trials_to_target([150.0, 110.0], 100.0) is None
    assert trials_to_target([150.0], None) is None


def test_random_replay_is_a_seeded_permutation():
    measured = _measured()
    a, b = replay_random(measured, 0), replay_random(measured, 1)
    assert sorted(a, key=str) == sorted(measured.values(), key=str) and len(a) == len(measured)
    assert a == replay_random(measured, 0) and a != b


def test_tpe_replay_is_the_sweep_search_on_lookups():
    measured = _measured()
    default = {"BLOCK_M": 32, "BLOCK_N": 32, "num_stages": 2}
    seen = replay_tpe(measured, PARAMS, default, seed=0, startup_trials=3)
    assert seen[0] == measured[config_id(default)]  # the default first, as in a sweep
    assert len(seen) == len(measured)  # every valid config once, then it stops
    assert seen == replay_tpe(measured, PARAMS, default, seed=0, startup_trials=3)  # seeded
    hits = [trials_to_target(replay_tpe(measured, PARAMS, default, s, 3), 100.0) for s in range(5)]
    assert all(h is not None and h <= len(measured) for h in hits)
    # a resources failure prunes the configs it dominates: they are never looked up
    failures = {config_id({"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 2}): ("resources", "OutOfResources")}
    big = {"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 2}
    pruning = replay_tpe({**measured, config_id(big): NAN}, PARAMS, big, seed=0, startup_trials=3,
                         failures=failures)
    assert len(pruning) == len(measured) - 7  # M64/M128 x N64/N128 x s2/s3, but the failure itself, is pruned


def test_study_through_the_library_on_one_point():
    point = Point(1, 1, 40, 32)  # 6 valid configs in the cpu space
    result = run_study([point], CPU, seeds=3, grid=None)
    assert result["provenance"]["gpu"] == "cpu-interpreter" and result["provenance"]["seeds"] == [0, 1, 2]
    (row,) = result["points"]
    assert row["point"] == point.as_dict() and row["valid_configs"] == 6
    assert row["exhaustive_best_us"] > 0
    for key in ("tpe_trials_to_3pct", "random_trials_to_3pct"):
        assert len(row[key]) == 3 and all(1 <= n <= 6 for n in row[key])
    json.dumps(result, allow_nan=False)


def test_study_search_cli_on_the_smoke_grid(tmp_path):
    out, plot = tmp_path / "study.json", tmp_path / "study.png"
    result = CliRunner().invoke(app, ["study-search", "--gpu", "cpu", "--grid", "smoke", "--seeds", "2",
                                      "--out", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "trials to within 3%" in result.output and "B2-H1-S50-D32-causal-float16" in result.output
    doc = json.loads(out.read_text())
    assert set(doc) == {"provenance", "points"} and len(doc["points"]) == 3
    for row in doc["points"]:
        assert set(row) == {"point", "valid_configs", "exhaustive_best_us", "tpe_trials_to_3pct",
                            "random_trials_to_3pct"}
        assert len(row["tpe_trials_to_3pct"]) == len(row["random_trials_to_3pct"]) == 2
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
