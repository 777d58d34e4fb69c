"""A search that spends GPU time well (issue 4): only valid configs are proposed and none is recorded as a trial
without running, failures are constraints (never re-run, resources failures prune larger configs), warm starts
from tuned neighbours, the patience stopping rule and the sweep's time budget.

Real Optuna studies and, where a trial runs, the real kernel in Triton's interpreter (in this process, so that
tests can plant failures)."""

from __future__ import annotations

import time

import optuna
import pytest
from typer.testing import CliRunner

from flashcore.kernels.attention_fwd import launch as fwd_launch
from flashcore.autotune import PROFILES, Point
from flashcore.autotune.tuning.search import Patience, Proposer, config_id, dominates
from flashcore.autotune.tuning.sweep import sweep, tune_point
from flashcore.autotune.core.toolchain import make_key
from flashcore.autotune.cli.app import app
from flashcore.cache import CacheStore, Entry
from flashcore.kernels import KernelCompileError, KernelResourceError, get_family
from flashcore.kernels import load_space
from flashcore.autotune.tuning.options import Hooks, SweepOptions

CPU = PROFILES["cpu"]
SPACE = load_space("attention_fwd", "cpu")
FAMILY = get_family("attention_fwd")
POINT = Point(1, 2, 64, 32)  # 6 valid configs: BLOCK_M 32/64 x BLOCK_N 16/32/64


@pytest.fixture
def store():
    with CacheStore.memory() as s:
        yield s


def _config(**changes) -> dict:
    return {**SPACE.default_for(POINT, CPU), **changes}


# -- proposals -------------------------------------------------------------------------------------------------


def test_proposer_asks_only_valid_untried_configs_and_counts_the_rest():
    params = (("BLOCK_M", (16, 32, 64, 128)), ("BLOCK_N", (16, 32, 64, 128)), ("num_stages", (1, 2, 3)))
    valid = [{"BLOCK_M": m, "BLOCK_N": n, "num_stages": s} for m, n, s in
             [(32, 32, 2), (64, 32, 2), (64, 64, 3), (128, 16, 1)]]  # 4 of 48: most proposals are invalid
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    proposer = Proposer(study, params, valid, seeds=[valid[2]])
    order = []
    while (step := proposer.propose(max_asks=500)) is not None:
        trial, config = step
        order.append(config)
        proposer.note(config, float(config["BLOCK_M"]))
        study.tell(trial, float(config["BLOCK_M"]))
    assert order[0] == valid[2]  # seeds first
    assert sorted(map(config_id, order)) == sorted(map(config_id, valid))  # each valid config once, no other
    assert proposer.invalid > 0 and proposer.asks < 500
    assert proposer.propose(max_asks=500) is None


def test_a_sweep_records_no_invalid_rows(store):
    point = Point(1, 3, 77, 64, True)  # 12 of the 18 configs of the cpu space are valid
    res = tune_point(point, store, SweepOptions(profile=CPU, trials=4, seed=3, isolate=False))
    assert len(res.trials) == 4 and len(store.trials(res.key)) == 4
    assert not any(t.status == "invalid" for t in res.trials)
    assert all(not SPACE.violations(t.config, point, CPU) for t in res.trials)
    assert len({config_id(t.config) for t in res.trials}) == 4


# -- failures as constraints -----------------------------------------------------------------------------------


def test_resources_failure_dominates_larger_tiles_and_stages_with_the_same_loads():
    failed = {"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 3, "num_warps": 4, "LOADS": "pointer"}
    assert dominates(failed, {**failed, "BLOCK_N": 128, "num_stages": 4, "num_warps": 8})
    assert dominates(failed, failed)
    assert not dominates(failed, {**failed, "BLOCK_N": 32, "num_stages": 4})
    assert not dominates(failed, {**failed, "BLOCK_M": 128, "LOADS": "host_tma"})
    proposer = Proposer(None, (), [failed, {**failed, "BLOCK_M": 128}, {**failed, "BLOCK_M": 32}])
    assert proposer.note(failed, float("nan"), "compile_error", "x") == []  # a compile error says nothing else
    pruned = proposer.note({**failed, "BLOCK_M": 32, "num_stages": 2}, float("nan"), "resources", "OutOfResources")
    assert [c["BLOCK_M"] for c in pruned] == [128, 32]
    assert set(proposer.pruned.values()) == {"pruned by failure of M32 N64 w4 s2 LOADS=pointer"}
    assert proposer.untried == {}


def test_resources_failure_prunes_before_compiling(store, monkeypatch):
    real = fwd_launch.attention_fwd
    ran = set()  # each config's launches (the timed ones too)

    def small_smem(q, k, v, config, **kw):
        ran.add((config["BLOCK_M"], config["BLOCK_N"]))
        if config["BLOCK_N"] >= 32:
            raise KernelResourceError("OutOfResources: planted shared memory")
        return real(q, k, v, config, **kw)

    monkeypatch.setattr(fwd_launch, "attention_fwd", small_smem)
    res = tune_point(POINT, store, SweepOptions(profile=CPU, trials=6, seed=0, isolate=False))
    # the default (M32 N32) fails first and prunes M32/M64 x N32/N64 but itself: only the N16 tiles and it run
    assert sorted(ran) == [(32, 16), (32, 32), (64, 16)]
    assert len(res.pruned) == 3
    assert all(why == "pruned by failure of M32 N32 w4 s1 LOADS=pointer" for _, why in res.pruned)
    assert res.best is not None and res.best.config["BLOCK_N"] == 16 and res.stopped == "space"


def test_a_failed_config_never_runs_again_across_resume_and_seeds(tmp_path, monkeypatch):
    real = fwd_launch.attention_fwd

    def no_n16(q, k, v, config, **kw):
        if config["BLOCK_N"] == 16:
            raise KernelCompileError("CompilationError: planted")
        return real(q, k, v, config, **kw)

    monkeypatch.setattr(fwd_launch, "attention_fwd", no_n16)
    with CacheStore.open(tmp_path / "c.db") as store:
        first = tune_point(POINT, store, SweepOptions(profile=CPU, trials=3, seed=0, isolate=False))
        tune_point(POINT, store, SweepOptions(profile=CPU, trials=6, seed=0, isolate=False))  # resumes the same study
        other = tune_point(POINT, store, SweepOptions(profile=CPU, trials=6, seed=1, isolate=False))  # another study
        rows = store.trials(first.key)
    failed = [config_id(t.config) for t in rows if t.status == "compile_error"]
    assert len(failed) == len(set(failed)) == 2  # M32 N16 and M64 N16, once each over three studies
    assert not any(t.status == "compile_error" for t in other.trials)
    runs = [config_id(t.config) for t in rows if t.study == first.trials[0].study]
    assert len(runs) == len(set(runs)) == 6


# -- warm starts -----------------------------------------------------------------------------------------------


def _winner(store, point: Point, config: dict) -> None:
    key = make_key(point, FAMILY, "cpu-interpreter", "cpu")
    store.put_winner(Entry(key, config, 10.0, 11.0, 12.0, 1.0, 1e-4, "2026-01-01T00:00:00+00:00"))


def test_a_new_point_starts_from_its_nearest_tuned_neighbours(store):
    _winner(store, Point(2, 2, 64, 32), _config(BLOCK_M=64, BLOCK_N=16))      # distance 1
    _winner(store, Point(1, 2, 128, 32), _config(BLOCK_M=64, BLOCK_N=64))     # distance 2
    _winner(store, Point(1, 2, 256, 32), _config(BLOCK_M=128, BLOCK_N=128))   # distance 4: invalid at S=64
    _winner(store, Point(1, 2, 512, 32), _config(BLOCK_M=32, BLOCK_N=64))     # 4th nearest: not used
    _winner(store, Point(2, 2, 64, 64), _config(BLOCK_M=32, BLOCK_N=16))      # another head dim
    _winner(store, Point(2, 2, 64, 32, True), _config(BLOCK_M=64, BLOCK_N=32))  # causal
    res = tune_point(POINT, store, SweepOptions(profile=CPU, trials=3, seed=0, isolate=False))
    assert [(t.config["BLOCK_M"], t.config["BLOCK_N"]) for t in res.trials] == [(64, 16), (64, 64), (32, 32)]
    assert res.trials[2].config == SPACE.default_for(POINT, CPU)  # then the space's default
    cold = tune_point(POINT, CacheStore.memory(), SweepOptions(profile=CPU, trials=1, seed=0, isolate=False))
    assert cold.trials[0].config == SPACE.default_for(POINT, CPU)


# -- stopping --------------------------------------------------------------------------------------------------


def test_patience_counts_trials_since_the_last_real_gain():
    stop = Patience(patience=3, min_improvement=0.1)
    for value in (float("nan"), float("nan"), float("nan"), float("nan")):
        stop.add(value)
    assert not stop.exhausted  # nothing passed yet: go on
    for value in (100.0, 95.0, 92.0, 300.0):  # 95 and 92 are gains under 10% of 100
        stop.add(value)
    assert stop.exhausted and stop.best == 92.0
    again = Patience(patience=3, min_improvement=0.1)
    for value in (100.0, 95.0, 89.0, 89.0, 88.0):  # 89 is more than 10% under 100: a gain
        again.add(value)
        assert not again.exhausted
    assert Patience(None).exhausted is False


def test_patience_stops_a_point_and_it_keeps_its_winner(store):
    res = tune_point(POINT, store, SweepOptions(profile=CPU, trials=6, seed=0, isolate=False, patience=1, min_improvement=1.0))  # no trial can gain 100%: stop after the one following the first
    assert len(res.trials) == 2 and res.stopped == "patience"
    assert res.best is not None and store.get_winner(res.key) is not None


def test_time_budget_defers_points_and_they_resume(tmp_path):
    points = [POINT, Point(1, 2, 64, 32, True)]
    with CacheStore.open(tmp_path / "c.db") as store:
        late = sweep(points, store, SweepOptions(profile=CPU, trials=2, isolate=False, time_budget_s=1e-9, kernels=("attention_fwd",)))
        assert [r.stopped for r in late] == ["time budget"] * 2 and not store.trials() and not store.winners()
        deadline = time.monotonic() + 0.2
        cut = tune_point(POINT, store, SweepOptions(profile=CPU, trials=3, isolate=False), deadline=deadline,
                         on_trial=lambda p, r: time.sleep(max(0.0, deadline - time.monotonic()) + 0.05))
        assert cut.stopped == "time budget" and len(cut.trials) == 1 and cut.best is None
        assert store.get_winner(cut.key) is None  # not tuned: the next sweep resumes it
        done = sweep(points, store, SweepOptions(profile=CPU, trials=3, isolate=False, kernels=("attention_fwd",)))
        assert done[0].resumed == 1 and len(done[0].trials) == 3 and all(r.best for r in done)


def test_sweep_cli_reports_points_not_tuned_for_time(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--gpu", "cpu", "--grid", "smoke", "--trials", "2", "--time-budget",
                                      "1", "--patience", "3", "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 0, result.output
    assert "not tuned: time budget" in result.output and "run the same command again" in result.output
