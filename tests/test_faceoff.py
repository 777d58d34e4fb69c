"""The sweep's face-off: where several candidates won at a point, their winners are timed again in turns and
those figures stored, so that a spell of slow runs during one candidate's study does not decide what is served."""

from __future__ import annotations

import pytest

from flashcore.autotune import PROFILES, Point
from flashcore.autotune.core.profiles import device_identity
from flashcore.autotune.core.toolchain import make_key
from flashcore.autotune.tuning import sweep as sweep_mod
from flashcore.autotune.tuning.faceoff import face_off
from flashcore.autotune.tuning.options import SweepOptions
from flashcore.autotune.tuning.sweep import PointResult, sweep
from flashcore.autotune.tuning.trial import TrialOutcome
from flashcore.cache import CacheStore, Entry
from flashcore.kernels import KernelFamily, get_family
from flashcore.kernels import load_space

CPU = PROFILES["cpu"]
POINT = Point(1, 6, 45, 32, True, kv_heads=2)


def _backend(name: str) -> KernelFamily:
    return KernelFamily(name=name, launcher="planted_backends:right", reference="reference:attention_reference",
                        space=None, dtypes=("float16", "bfloat16"), kind="backend", lengths="any")


def _won(store, family, config, median_us, skipped=False):
    gpu, cc = device_identity(CPU)
    key = make_key(POINT, family, gpu, cc)
    rec = sweep_mod._record(key, config, TrialOutcome("ok", "", median_us, median_us, median_us, 1.0, 1e-3, 1e-3),
                            f"{key.id}-study", 0, {})
    store.add_trial(rec)
    store.put_winner(Entry.from_trial(rec))
    res = PointResult(POINT, key, skipped=skipped)
    res.best = rec
    return res


class Turns:
    """A fake trial runner: both candidates take 100 µs, but the first ``slow`` runs 15% longer."""

    def __init__(self, slow=0, fail=None):
        self.slow, self.fail, self.calls = slow, fail, []

    def __call__(self, family, config):
        self.calls.append(family.name)
        if family.name == self.fail and len(self.calls) > 2:
            return TrialOutcome("timeout", "no answer in 30 s")
        t = 100.0 * (1.15 if len(self.calls) <= self.slow else 1.0)
        return TrialOutcome("ok", "", t, t, t, 1.0, 1e-3, 1e-3)


@pytest.fixture
def store():
    with CacheStore.memory() as s:
        yield s


def _two(store, skipped=(False, False)):
    own = get_family("attention_fwd")
    config = load_space("attention_fwd", "cpu").default_for(POINT, CPU)
    return [(own, _won(store, own, config, 90.0, skipped[0])),
            (_backend("planted_sdpa"), _won(store, _backend("planted_sdpa"), {}, 110.0, skipped[1]))]


@pytest.mark.parametrize("slow", [0, 1, 2])
def test_the_winners_are_timed_in_turns_and_the_median_turn_stored(store, slow):
    """Studies had own at 90 and the backend at 110; side by side both take 100: that is what is stored (own's
    faster old figure replaced), whichever runs a slow spell hits, and every turn is a recorded trial."""
    pairs = _two(store)
    turns = Turns(slow)
    stored = face_off(POINT, pairs, store, turns, sweep_mod._record)
    assert stored == {"attention_fwd": 100.0, "planted_sdpa": 100.0}
    assert turns.calls[:2] == ["attention_fwd", "planted_sdpa"] and turns.calls[2:4] == ["planted_sdpa",
                                                                                           "attention_fwd"]
    for family, res in pairs:
        winner = store.get_winner(res.key)
        assert winner.median_us == 100.0 and res.best.median_us == 100.0
        faceoff = [t for t in store.trials(res.key) if t.study == f"{res.key.id}-faceoff"]
        assert len(faceoff) == 3 and sorted(t.trial_number for t in faceoff) == [0, 1, 2]
        assert winner.config == res.best.config


def test_a_candidate_failing_a_turn_keeps_its_figures(store):
    pairs = _two(store)
    stored = face_off(POINT, pairs, store, Turns(fail="planted_sdpa"), sweep_mod._record)
    assert stored == {"attention_fwd": 100.0}
    assert store.get_winner(pairs[1][1].key).median_us == 110.0


def test_nothing_to_face_off(store):
    """One candidate, or every winner read from the cache (nothing tuned now), or no turns: no run at all."""
    turns = Turns()
    pairs = _two(store, skipped=(True, True))
    assert face_off(POINT, pairs, store, turns, sweep_mod._record) == {}
    assert face_off(POINT, pairs[:1], store, turns, sweep_mod._record) == {}
    assert face_off(POINT, _two(store), store, turns, sweep_mod._record, rounds=0) == {}
    assert not turns.calls


def test_a_sweep_ends_with_the_face_off(tmp_path):
    """An in-process CPU sweep of two of our kernels at one point (backends need a GPU): both winners come from
    face-off turns; with faceoff_rounds=0 they come from the studies."""
    for rounds in (3, 0):
        with CacheStore.open(tmp_path / f"c{rounds}.db") as store:
            opts = SweepOptions(profile=CPU, trials=1, isolate=False, faceoff_rounds=rounds,
                                kernels=("attention_fwd", "attention_kv"))
            results = sweep([POINT], store, opts)
            assert len(results) == 2 and all(r.best is not None for r in results)
            for res in results:
                studies = {t.study for t in store.trials(res.key)}
                assert (f"{res.key.id}-faceoff" in studies) == bool(rounds)
                winner = store.get_winner(res.key)
                assert winner.median_us == res.best.median_us
                if rounds:
                    assert res.best.study == f"{res.key.id}-faceoff"


def test_the_stored_figure_is_the_median_turn_not_the_fastest(store):
    pairs = _two(store)
    times = {"attention_fwd": [120.0, 100.0, 80.0], "planted_sdpa": [101.0, 99.0, 130.0]}

    def run(family, config):
        t = times[family.name].pop(0)
        return TrialOutcome("ok", "", t, t, t, 1.0, 1e-3, 1e-3)

    assert face_off(POINT, pairs, store, run, sweep_mod._record) == {"attention_fwd": 100.0, "planted_sdpa": 101.0}


def test_a_sweep_of_one_candidate_faces_off_against_the_cached_winners_of_the_others(tmp_path):
    """``--kernel attention_kv`` (as ``--kernel sdpa_cudnn --retune`` on a GPU) at a point whose attention_fwd
    winner the cache holds: both winners are timed again side by side."""
    with CacheStore.open(tmp_path / "c.db") as store:
        first = sweep([POINT], store, SweepOptions(profile=CPU, trials=1, isolate=False, faceoff_rounds=0,
                                                   kernels=("attention_fwd",)))[0]
        assert {t.study for t in store.trials(first.key)} == {first.best.study}
        sweep([POINT], store, SweepOptions(profile=CPU, trials=1, isolate=False, kernels=("attention_kv",)))
        fwd = [t for t in store.trials(first.key) if t.study == f"{first.key.id}-faceoff"]
        assert len(fwd) == 3
        assert store.get_winner(first.key).median_us in {t.median_us for t in fwd}
