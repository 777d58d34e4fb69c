"""A sweep: one seeded Optuna study per point, every trial gated, the fastest passing config kept.

Optuna is imported here, inside the functions, never by ``import autotune``: run time does not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cache import CacheKey, CacheStore, Entry, TrialRecord
from kernels import get_family
from search_spaces import load_space

from ._grids import Point
from ._profiles import GpuProfile, device_identity
from ._toolchain import make_key, now_iso
from ._trial import TrialOutcome, prepare, run_trial

DEFAULT_TRIALS = {"gpu": 30, "cpu": 6}


@dataclass
class PointResult:
    """What tuning one point produced."""

    point: Point
    key: CacheKey
    trials: list[TrialRecord] = field(default_factory=list)
    best: TrialRecord | None = None
    valid_configs: int = 0
    skipped: bool = False  # already tuned in the cache, not re-run

    @property
    def failures(self) -> int:
        return sum(1 for t in self.trials if t.status not in ("ok", "invalid"))


TrialCallback = Callable[[Point, TrialRecord], None]


def config_id(config: dict[str, Any]) -> tuple:
    return tuple(sorted(config.items()))


def tune_point(point: Point, *, profile: GpuProfile, store: CacheStore, trials: int, seed: int = 0,
               kernel: str = "attention_fwd", on_trial: TrialCallback | None = None,
               rep_ms: int = 100) -> PointResult:
    """Run one seeded TPE study at ``point``: up to ``trials`` measured configs, the default one first.

    Configs that break a validity rule are recorded as "invalid" and never compiled; every other one is run
    on NaN-poisoned output, gated against fp32 and timed. Failures are recorded with their reason and told
    to Optuna as failed, so they can never win. The fastest passing config becomes the key's winner unless
    the cache already holds a faster one.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    family = get_family(kernel)
    space = load_space(family.space, profile.name if profile.interpreter else "default")
    gpu, cc = device_identity(profile)
    key = make_key(point, family, gpu, cc)
    result = PointResult(point, key, valid_configs=len(space.candidates(point, profile)))
    ctx = prepare(point, family, profile, space, seed)

    study_name = f"{key.id}-seed{seed}"
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, trials // 3)))
    study = optuna.create_study(direction="minimize", sampler=sampler, study_name=study_name)
    candidates = space.candidates(point, profile)
    if len(candidates) <= trials:  # the whole valid space fits in the budget: try all of it
        for config in candidates:
            study.enqueue_trial(config)
    else:
        default = space.default_for(point, profile)
        if config_id(default) in {config_id(c) for c in candidates}:
            study.enqueue_trial(default)

    seen: dict[tuple, float | None] = {}
    measured, asks = 0, 0
    budget = min(trials, len(candidates))
    while measured < budget and asks < 50 * max(1, trials):
        asks += 1
        trial = study.ask()
        config = {name: trial.suggest_categorical(name, list(values)) for name, values in space.params}
        cid = config_id(config)
        if cid in seen:  # already measured (or pruned) at this point: tell Optuna again, run nothing
            _tell(study, trial, seen[cid], pruned=seen[cid] is None)
            continue
        outcome = run_trial(ctx, config, rep_ms=rep_ms)
        record = _record(key, config, outcome, study_name, trial.number)
        result.trials.append(record)
        store.add_trial(record)
        if on_trial:
            on_trial(point, record)
        if outcome.status == "invalid":
            seen[cid] = None
            _tell(study, trial, None, pruned=True)
            continue
        measured += 1
        seen[cid] = outcome.median_us if outcome.status == "ok" else float("nan")
        _tell(study, trial, seen[cid])

    passing = [t for t in result.trials if t.status == "ok"]
    if passing:
        result.best = min(passing, key=lambda t: t.median_us)
        store.put_winner(to_entry(result.best))
    return result


def sweep(points: Iterable[Point], *, profile: GpuProfile, store: CacheStore, trials: int | None = None,
          seed: int = 0, kernel: str = "attention_fwd", retune: bool = False,
          on_point: Callable[[Point, int], None] | None = None, on_trial: TrialCallback | None = None,
          on_done: Callable[[PointResult], None] | None = None, rep_ms: int = 100) -> list[PointResult]:
    """Tune every point in turn; points the cache already has a current winner for are skipped unless
    ``retune``. ``on_point(point, index)``, ``on_trial`` and ``on_done`` let a front end show progress."""
    n = trials or DEFAULT_TRIALS["cpu" if profile.interpreter else "gpu"]
    family = get_family(kernel)
    gpu, cc = device_identity(profile)
    results = []
    for i, point in enumerate(points):
        if on_point:
            on_point(point, i)
        key = make_key(point, family, gpu, cc)
        existing = None if retune else store.get_winner(key)
        if existing is not None:
            res = PointResult(point, key, skipped=True)
            res.best = TrialRecord(key=key, config=existing.config, status="ok", median_us=existing.median_us,
                                   p95_us=existing.p95_us, p99_us=existing.p99_us, tflops=existing.tflops,
                                   rel_err=existing.rel_err, created_at=existing.created_at)
        else:
            res = tune_point(point, profile=profile, store=store, trials=n, seed=seed, kernel=kernel,
                             on_trial=on_trial, rep_ms=rep_ms)
        results.append(res)
        if on_done:
            on_done(res)
    return results


def to_entry(record: TrialRecord) -> Entry:
    """The winner entry made from a passing trial."""
    return Entry(key=record.key, config=record.config, median_us=record.median_us, p95_us=record.p95_us,
                 p99_us=record.p99_us, tflops=record.tflops, rel_err=record.rel_err, created_at=record.created_at)


def _record(key: CacheKey, config: dict, outcome: TrialOutcome, study: str, number: int) -> TrialRecord:
    return TrialRecord(key=key, config=config, status=outcome.status, reason=outcome.reason,
                       median_us=outcome.median_us, p95_us=outcome.p95_us, p99_us=outcome.p99_us,
                       tflops=outcome.tflops, rel_err=outcome.rel_err, max_abs_err=outcome.max_abs_err,
                       study=study, trial_number=number, created_at=now_iso(), extra=outcome.extra)


def _tell(study, trial, value: float | None, pruned: bool = False) -> None:
    import math

    import optuna

    if pruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elif value is None or math.isnan(value):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, value)
