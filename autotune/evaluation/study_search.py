"""``autotune study-search``: how fast does the sweep's search find a near-best config? Every valid config of a
point is timed once (gated, in a worker), then the sweep's TPE search (:class:`..tuning.search.Proposer`) and random
search are replayed on those timings, per seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..tuning.search import Proposer, config_id, startup_trials, tell

TARGET = 0.03  # trials until within 3% of the exhaustive best


@dataclass
class PointStudy:
    """One point of a study-search: its exhaustive measurements and the trials-to-target per seed."""

    point: Any
    measured: dict[tuple, float] = field(default_factory=dict)  # config -> µs; NaN: failed
    failures: dict[tuple, tuple[str, str]] = field(default_factory=dict)  # config -> (status, reason)
    tpe: list[int | None] = field(default_factory=list)
    random: list[int | None] = field(default_factory=list)

    @property
    def best_us(self) -> float | None:
        ok = [v for v in self.measured.values() if not math.isnan(v)]
        return min(ok) if ok else None

    def as_dict(self) -> dict[str, Any]:
        return {"point": self.point.as_dict(), "valid_configs": len(self.measured),
                "exhaustive_best_us": self.best_us, "tpe_trials_to_3pct": self.tpe,
                "random_trials_to_3pct": self.random}


def trials_to_target(values: Iterable[float], best: float | None, target: float = TARGET) -> int | None:
    """1-based count of ``values`` until one is within ``target`` of ``best`` (None: never)."""
    if best is None:
        return None
    for i, v in enumerate(values, 1):
        if not math.isnan(v) and v <= best * (1 + target):
            return i
    return None


def replay_tpe(measured: dict[tuple, float], params: Sequence[tuple[str, Sequence[Any]]], default: dict | None,
               seed: int, startup_trials: int, failures: dict[tuple, tuple[str, str]] | None = None) -> list[float]:
    """The values the sweep's search (default first, :class:`Proposer`) sees, in order, when every config's
    value is looked up in ``measured`` (a fresh in-memory study; failed configs are told FAIL)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    study = optuna.create_study(sampler=sampler, direction="minimize")  # startup_trials: search.startup_trials
    configs = [dict(cid) for cid in measured]
    proposer = Proposer(study, params, configs, seeds=[default] if default else [])
    seen: list[float] = []
    while (step := proposer.propose(max_asks=50 * max(1, len(configs)))) is not None:
        trial, config = step
        cid = config_id(config)
        value = measured[cid]
        proposer.note(config, value, *(failures or {}).get(cid, ("ok", "")))
        seen.append(value)
        tell(study, trial, value)
    return seen


def replay_random(measured: dict[tuple, float], seed: int) -> list[float]:
    """The values of the valid configs in a uniformly random order without replacement."""
    order = list(measured)
    random.Random(seed).shuffle(order)
    return [measured[cid] for cid in order]


def study_point(point: Any, space: Any, profile: Any, run: Callable[[dict[str, Any]], Any],
                seeds: Sequence[int], startup_trials: int) -> PointStudy:
    """Time every valid config of ``space`` at ``point`` once with ``run(config) -> TrialOutcome`` (gated),
    then replay TPE and random search on the measurements for each seed."""
    res = PointStudy(point)
    for config in space.candidates(point, profile):
        outcome = run(config)
        ok = outcome.status == "ok" and outcome.median_us is not None
        res.measured[config_id(config)] = outcome.median_us if ok else float("nan")
        if not ok:
            res.failures[config_id(config)] = (outcome.status, outcome.reason)
    best = res.best_us
    default = space.default_for(point, profile)
    default = default if config_id(default) in res.measured else None
    for seed in seeds:
        tpe = replay_tpe(res.measured, space.params, default, seed, startup_trials, res.failures)
        res.tpe.append(trials_to_target(tpe, best))
        res.random.append(trials_to_target(replay_random(res.measured, seed), best))
    return res


def run_study(points: Iterable[Any], profile: Any, *, seeds: int = 5, kernel: str | None = None,
              rep_ms: int = 100, trial_timeout_s: float | None = None, grid: str | None = None,
              on_point: Callable[[PointStudy], None] | None = None, compile_workers: int | None = None,
              on_config: Callable[[Any, dict[str, Any], Any], None] | None = None) -> dict[str, Any]:
    """Study-search over ``points``: ``{"provenance", "points": [PointStudy.as_dict()]}``, ready for JSON.

    Every trial runs in a worker process (:class:`autotune.tuning.worker.TrialWorker`), gated like a sweep's; the
    cache is neither read nor written. TPE's replays use the sweep's sampler settings for its default trial count.
    ``compile_workers`` processes compile the configs ahead of timing, as in a sweep; ``on_config(point, config,
    outcome)`` follows each timed config. ``kernel``: a family's name (default: the registry's default family).
    """
    from flashcore.kernels import default_family, get_family, load_space

    from ..core.profiles import device_identity
    from ..core.toolchain import provenance
    from ..tuning.compile_pool import CompilePool, default_workers
    from ..tuning.options import DEFAULT_TRIALS
    from ..tuning.worker import TrialWorker

    kernel = kernel or default_family()
    family = get_family(kernel)
    space = load_space(family.space, profile.name)
    trials = DEFAULT_TRIALS["cpu" if profile.interpreter else "gpu"]
    startup = startup_trials(trials)
    prov: dict[str, Any] = dict(provenance(*device_identity(profile)))
    prov.update(profile=profile.name, kernel=kernel, grid=grid, seeds=list(range(seeds)), rep_ms=rep_ms,
                target=f"within {TARGET:.0%} of the exhaustive best", tpe_startup_trials=startup,
                tpe_policy="the sweep's: default first, only valid untried configs, failures as constraints",
                random_policy="valid configs uniformly without replacement",
                timing="cpu-wall (meaningless for speed)" if profile.interpreter else "cuda-graph-events")
    out = []
    points = list(points)
    n_compile = default_workers(profile.interpreter) if compile_workers is None else compile_workers
    pool = CompilePool(family, n_compile) if n_compile and family.precompiler else None
    with TrialWorker(family, profile, timeout_s=trial_timeout_s, rep_ms=rep_ms) as worker:
        try:
            for point in points if pool else ():
                pool.behind(point, space.candidates(point, profile))
            for point in points:
                worker.bind(point)
                if pool:
                    pool.ahead(point, space.candidates(point, profile))

                def run(config: dict[str, Any], point: Any = point) -> Any:
                    rejected = pool.rejection(point, config, worker.timeout_s) if pool else None
                    outcome = rejected if rejected is not None else worker.run(config)
                    if on_config:
                        on_config(point, config, outcome)
                    return outcome

                res = study_point(point, space, profile, run, list(range(seeds)), startup)
                out.append(res.as_dict())
                if on_point:
                    on_point(res)
        finally:
            if pool:
                pool.close()
    prov["compile_workers"] = n_compile if pool else 0
    return {"provenance": prov, "points": out}
