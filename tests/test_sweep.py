"""Sweeps: real Optuna studies over real kernels (interpreter), every trial gated and recorded.

Trials run in a worker process (the default) except where a test monkeypatches the launcher in this process."""

import pytest

from flashcore.kernels.attention_fwd import launch as fwd_launch
from flashcore.autotune import PROFILES, Point, check
from flashcore.autotune.tuning.sweep import sweep, tune_point
from flashcore.cache import CacheStore
from flashcore.kernels import KernelCompileError, KernelResourceError
from flashcore.kernels import load_space
from flashcore.autotune.tuning.options import SweepOptions

CPU = PROFILES["cpu"]
POINT = Point(1, 3, 77, 64, True)


@pytest.fixture
def store():
    with CacheStore.memory() as s:
        yield s


def test_tune_point_records_trials_and_keeps_the_fastest_passing(store):
    res = tune_point(POINT, store, SweepOptions(profile=CPU, trials=4, seed=0))
    measured = [t for t in res.trials if t.status != "invalid"]
    assert len(measured) == 4
    assert all(t.status == "ok" and t.rel_err < 2e-3 for t in measured)
    assert res.best == min(measured, key=lambda t: t.median_us)
    winner = store.get_winner(res.key)
    assert winner.config == res.best.config and winner.median_us == res.best.median_us
    assert len(store.trials(res.key)) == len(res.trials)
    # the space's safe default is tried first
    first = res.trials[0].config
    assert first == load_space("attention_fwd", "cpu").default_for(POINT, CPU)
    core = {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1, "CAUSAL_SPLIT": True}
    assert {name: first[name] for name in core} == core
    assert not any(v is True for name, v in first.items() if name not in core)  # other switches off


def test_failing_configs_are_recorded_and_never_win(store, monkeypatch):
    real = fwd_launch.attention_fwd

    def flaky(q, k, v, config, **kw):
        if config["BLOCK_N"] == 16:
            raise KernelCompileError("CompilationError: planted")
        if config["BLOCK_M"] == 64:
            raise KernelResourceError("OutOfResources: planted shared memory")
        out = real(q, k, v, config, **kw)
        if config["BLOCK_N"] == 64:
            out.mul_(1.01)  # wrong by 1%: must fail the gate
        return out

    monkeypatch.setattr(fwd_launch, "attention_fwd", flaky)
    # in this process (isolate=False): a spawned worker would not see the monkeypatch; 50 trials: all the space
    res = tune_point(POINT, store, SweepOptions(profile=CPU, trials=50, seed=0, isolate=False))
    by_status = {}
    for t in res.trials:
        by_status.setdefault(t.status, []).append(t)
    assert set(by_status) == {"ok", "compile_error", "resources", "gate_failed"}
    # the whole valid space, each config once, except those a resources failure pruned (issue 4: never compiled)
    assert len(res.trials) + len(res.pruned) == res.valid_configs and res.pruned
    assert all(why.startswith("pruned by failure of M64") for _, why in res.pruned)
    assert all(c["BLOCK_M"] == 64 for c, _ in res.pruned)
    assert all("planted" in t.reason for t in by_status["compile_error"] + by_status["resources"])
    assert all(t.median_us is None for s, ts in by_status.items() if s != "ok" for t in ts)
    assert res.best.config["BLOCK_N"] == 32 and res.best.config["BLOCK_M"] != 64
    assert len(res.trials) == len({tuple(sorted(t.config.items())) for t in res.trials})  # no config run twice
    assert store.get_winner(res.key).config == res.best.config


def test_no_winner_when_nothing_passes(store, monkeypatch):
    monkeypatch.setattr(fwd_launch, "attention_fwd", lambda q, k, v, config, out=None, **kw: out)
    res = tune_point(POINT, store, SweepOptions(profile=CPU, trials=3, seed=0, isolate=False))
    assert res.best is None and store.get_winner(res.key) is None
    assert {t.status for t in res.trials} <= {"gate_failed", "invalid"}
    assert any("never written" in t.reason for t in res.trials)


def test_same_seed_proposes_the_same_configs(store):
    a = tune_point(POINT, store, SweepOptions(profile=CPU, trials=3, seed=7))
    b = tune_point(POINT, CacheStore.memory(), SweepOptions(profile=CPU, trials=3, seed=7))
    assert [t.config for t in a.trials] == [t.config for t in b.trials]


def test_sweep_skips_tuned_points_unless_retune(store):
    points = [Point(1, 1, 20, 32), Point(1, 1, 20, 32, True)]
    first = sweep(points, store, SweepOptions(profile=CPU, trials=2, kernels=("attention_fwd",)))
    assert not any(r.skipped for r in first) and len(store.winners()) == 2
    again = sweep(points, store, SweepOptions(profile=CPU, trials=2, kernels=("attention_fwd",)))
    assert all(r.skipped and r.best is not None for r in again)
    forced = sweep(points[:1], store, SweepOptions(profile=CPU, trials=2, retune=True, kernels=("attention_fwd",)))
    assert not forced[0].skipped


def test_winner_only_replaced_by_a_faster_config(store):
    res = tune_point(POINT, store, SweepOptions(profile=CPU, trials=2, seed=0))
    best = store.get_winner(res.key)
    from dataclasses import replace

    def scaled(f, **kw):
        return replace(best, median_us=best.median_us * f, p95_us=best.p95_us * f, p99_us=best.p99_us * f, **kw)

    assert not store.put_winner(scaled(2, config={"BLOCK_M": 16}))
    assert store.get_winner(res.key).config == best.config
    assert store.put_winner(scaled(0.5))
