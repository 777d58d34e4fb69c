"""``autotune bench`` times the providers of a point in turns and compares them turn by turn: a spell in which
the GPU runs the same kernel slower (seen on an H200 for seconds on end: benchmarks/probe_decode_timing.py)
must not decide which provider looks faster."""

from __future__ import annotations

import pytest

from flashcore.autotune.core.problem import Point
from flashcore.autotune.evaluation import bench
from flashcore.autotune.tuning.timing import Timing

POINT = Point(64, 32, 1, 128, False, "float16", 8, 16384)
BASE = {"own": 100.0, "cudnn": 100.0, "flash": 150.0}


class Spell:
    """A fake ``measure``: each provider's base time, 15% slower for the first ``slow`` calls; logs the calls."""

    def __init__(self, slow: int, fail: str | None = None):
        self.slow, self.fail, self.calls = slow, fail, []

    def __call__(self, fn, *, cuda, rep_ms):
        name = fn()
        self.calls.append((name, rep_ms))
        if name == self.fail and len(self.calls) > 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        t = BASE[name] * (1.15 if len(self.calls) <= self.slow else 1.0)
        return Timing(t, t * 1.01, t * 1.02, bench.CUDA_TIMING)


def _timed():
    return [(name, lambda name=name: name) for name in BASE]


@pytest.mark.parametrize("slow", [0, 1, 2, 3])
def test_a_slow_spell_over_part_of_the_timing_does_not_pick_the_winner(monkeypatch, slow):
    """own and cuDNN are equally fast; a spell over the first calls (own's first turn, or own's and cuDNN's)
    leaves the ratio at 1, where timing each once, one after the other, gave own 0.87x (the bench at 6c4b145)."""
    spell = Spell(slow)
    monkeypatch.setattr(bench, "measure", spell)
    row, errors = {}, {}
    bench._time_in_turns(row, errors, POINT, _timed(), cuda=True, rep_ms=30, rounds=3)
    assert row["own_rounds_us"][1:] == [100.0, 100.0] and len(row["own_rounds_us"]) == 3
    assert row["own_us"] == row["cudnn_us"] == 100.0
    ratios = bench._ratios(row)
    assert ratios["best_sdpa_over_own"] == pytest.approx(1.0)
    assert ratios["cudnn_over_own"] == pytest.approx(1.0)
    assert ratios["flash_over_own"] == pytest.approx(1.5)
    # each turn starts with another provider, each turn's window is a third of the point's
    firsts = [spell.calls[i][0] for i in (0, 3, 6)]
    assert sorted(firsts) == sorted(BASE)
    assert {rep for _, rep in spell.calls} == {10}


def test_one_after_the_other_the_spell_decides(monkeypatch):
    """The artifact the turns remove, shown with one turn: own, timed first in the spell, loses by 15%."""
    monkeypatch.setattr(bench, "measure", Spell(1))
    row, errors = {}, {}
    bench._time_in_turns(row, errors, POINT, _timed(), cuda=True, rep_ms=30, rounds=1)
    assert bench._ratios(row)["best_sdpa_over_own"] == pytest.approx(1 / 1.15)


def test_a_provider_failing_in_a_later_turn_has_no_figures_and_says_why(monkeypatch):
    monkeypatch.setattr(bench, "measure", Spell(0, fail="cudnn"))
    row, errors = {}, {}
    bench._time_in_turns(row, errors, POINT, _timed(), cuda=True, rep_ms=30, rounds=3)
    assert row["cudnn_us"] is None and "illegal memory access" in errors["cudnn"]
    assert row["own_us"] == 100.0 and len(row["own_rounds_us"]) == 3
    assert bench._ratios(row)["best_sdpa_over_own"] == pytest.approx(1.5)  # flash, the one backend left


def test_the_floor_is_a_copy_of_the_kv_bytes_timed_in_the_same_turns(monkeypatch):
    """At a KV-cache point the bench times a copy of K and V's bytes with the providers; each provider's read
    rate of K and V is reported as a fraction of the copy's rate (a copy moves each byte twice)."""
    import torch

    spell = Spell(0)
    monkeypatch.setattr(bench, "measure", spell)
    BASE["copy"] = 80.0
    try:
        row, errors = {}, {}
        bench._time_in_turns(row, errors, POINT, [*_timed(), ("copy", lambda: "copy")], cuda=True, rep_ms=30,
                             rounds=3)
    finally:
        del BASE["copy"]
    k = v = torch.empty(2, 3, 5, 8, dtype=torch.float16)
    row["served_us"] = row["cudnn_us"]
    floor = bench._floor(row, k, v)
    assert floor["kv_bytes"] == 2 * 2 * 3 * 5 * 8 * 2 and floor["copy_us"] == 80.0
    assert floor["copy_tbps"] == pytest.approx(2 * 960 / 80e-6 / 1e12)
    assert floor["own_floor"] == pytest.approx(0.4) and floor["cudnn_floor"] == pytest.approx(0.4)
    assert floor["flash_floor"] == pytest.approx(80 / 300) and floor["efficient_floor"] is None
    assert not [key for key in row if key.startswith("copy_")]  # the copy is not a provider of the row


def test_the_summary_names_the_floor_at_batch_1_over_long_caches():
    rows = [{"batch": 1, "kv_len": 65536, "own_floor": 0.8, "cudnn_floor": 0.9, "errors": {}},
            {"batch": 8, "kv_len": 65536, "own_floor": 0.5, "cudnn_floor": 0.9, "errors": {}},
            {"batch": 1, "kv_len": 4096, "own_floor": 0.3, "errors": {}}]
    s = bench.summarize(rows)
    assert s["min_own_floor_b1_kv32k"] == 0.8 and s["min_own_floor"] == 0.3
    assert s["min_cudnn_floor_b1_kv32k"] == 0.9 and s["min_served_floor"] is None
