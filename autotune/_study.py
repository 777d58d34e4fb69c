"""How a point's Optuna study proposes configs (shared by the sweep and ``autotune study-search``), and the
study-search itself: replaying that search on exhaustive measurements against random search.

The search policy (:class:`Proposer`):

- Proposals are confined to the valid configs not yet run: TPE keeps one categorical suggestion per parameter;
  a proposal that breaks a rule, was pruned by a failure, or was already run is told to Optuna (PRUNED, or its
  known value) and replaced by the nearest untried valid candidate, enqueued and asked next. Rule-invalid
  proposals are never compiled and are not trials: they are only counted.
- Failures as constraints: a config that failed is never run again at that point. A "resources" failure
  (shared memory) generalizes: every untried config with BLOCK_M, BLOCK_N and num_stages at least as large and
  every other parameter but num_warps equal is pruned ("pruned by failure of <config>") before it is compiled.
- Warm starts (:func:`warm_starts`): the winners of the nearest tuned neighbours in the cache come first.
- Stopping rule (:class:`Patience`): no gain of more than ``min_improvement`` over ``patience`` measured trials.

Optuna is imported inside the functions only.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._grids import format_config

MONOTONE = ("BLOCK_M", "BLOCK_N", "num_stages")  # shared memory grows with each of these
FREE = ("num_warps",)  # shared memory per program does not depend on it
GENERALIZING = ("resources",)  # failure statuses that prune the configs they dominate
TARGET = 0.03  # study-search: trials until within 3% of the exhaustive best


def config_id(config: dict[str, Any]) -> tuple:
    """A hashable identity of a config."""
    return tuple(sorted(config.items()))


def dominates(failed: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether ``config`` needs at least the shared memory of ``failed``: tiles and stages at least as large,
    every other parameter (num_warps aside) equal."""
    if set(failed) != set(config) or not all(name in failed for name in MONOTONE):
        return False
    for name, value in failed.items():
        if name in MONOTONE:
            if config[name] < value:
                return False
        elif name not in FREE and config[name] != value:
            return False
    return True


def generalizes(status: str, reason: str) -> bool:
    """Whether a failure says something about larger configs (shared memory, not the device's memory)."""
    return status in GENERALIZING and "OutOfMemoryError" not in reason


def tell(study: Any, trial: Any, value: float | None, pruned: bool = False) -> None:
    """Tell Optuna a trial's end: PRUNED (never run), FAIL (NaN or None) or its value."""
    import optuna

    if pruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elif value is None or math.isnan(value):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, value)


class Proposer:
    """Asks a study for the next config to run at one point, among the valid candidates not yet run.

    ``note`` every result (including those recorded by an earlier run) so that it is never proposed again and
    so that generalizing failures prune the configs they dominate. ``seeds`` are asked first, in order.
    """

    def __init__(self, study: Any, params: Sequence[tuple[str, Sequence[Any]]],
                 candidates: Iterable[dict[str, Any]], seeds: Iterable[dict[str, Any]] = ()) -> None:
        self.study = study
        self.params = [(name, list(values)) for name, values in params]
        self.untried: dict[tuple, dict[str, Any]] = {config_id(c): c for c in candidates}
        self.seen: dict[tuple, float | None] = {}  # config -> median µs; NaN: failed; None: never run
        self.pruned: dict[tuple, str] = {}  # config -> "pruned by failure of <config>"
        self.invalid = 0  # proposals that broke a rule or were pruned: told PRUNED, never compiled
        self.asks = 0
        self.queue = [dict(s) for s in seeds]
        self._index = {name: {v: i for i, v in enumerate(values)} for name, values in self.params}

    def seed(self, configs: Iterable[dict[str, Any]]) -> None:
        """Ask ``configs`` next (after the seeds already queued), those still untried."""
        self.queue += [dict(c) for c in configs]

    def note(self, config: dict[str, Any], value: float | None, status: str = "ok", reason: str = "") -> list[dict]:
        """Record that ``config`` ran (``value``: µs, NaN when it failed); return the configs its failure pruned."""
        cid = config_id(config)
        self.seen[cid] = value
        self.untried.pop(cid, None)
        if not generalizes(status, reason):
            return []
        label = format_config(config)
        newly = [c for c in self.untried.values() if dominates(config, c)]
        for c in newly:
            other = config_id(c)
            self.untried.pop(other)
            self.pruned[other] = f"pruned by failure of {label}"
        return newly

    def nearest(self, config: dict[str, Any]) -> dict[str, Any]:
        """The untried candidate closest to ``config`` (parameter value positions, each scaled to [0, 1])."""
        def distance(c: dict[str, Any]) -> float:
            return sum(abs(self._index[n][c[n]] - self._index[n].get(config.get(n), 0)) / max(1, len(vals) - 1)
                       for n, vals in self.params)
        return min(self.untried.values(), key=distance)

    def propose(self, max_asks: int) -> tuple[Any, dict[str, Any]] | None:
        """The next (trial, config) to run, or None when no valid config is left untried (or asks ran out)."""
        while self.untried and self.asks < max_asks:
            while self.queue and config_id(self.queue[0]) not in self.untried:
                self.queue.pop(0)
            if self.queue:  # asked next, unless an earlier run left an enqueued config waiting (it comes first)
                self.study.enqueue_trial(self.queue.pop(0))
            self.asks += 1
            trial = self.study.ask()
            config = {name: trial.suggest_categorical(name, values) for name, values in self.params}
            cid = config_id(config)
            if cid in self.untried:
                return trial, config
            if cid in self.seen:  # run before: tell Optuna again, run nothing
                tell(self.study, trial, self.seen[cid], pruned=self.seen[cid] is None)
            else:  # breaks a rule or pruned by a failure: never compiled, not a trial
                self.invalid += 1
                tell(self.study, trial, None, pruned=True)
            if self.untried:
                self.queue.insert(0, self.nearest(config))
        return None


@dataclass
class Patience:
    """The stopping rule: stop once the best has not improved by more than ``min_improvement`` (a fraction)
    over ``patience`` measured trials (None: never). Failed trials count as measured; before any config
    passes, the search goes on."""

    patience: int | None = None
    min_improvement: float = 0.02
    measured: int = 0
    best: float = math.inf
    _ref: float = math.inf
    _last_gain: int = 0

    def add(self, value: float | None) -> None:
        """Count one measured trial (``value``: µs, NaN when it failed; None: not measured)."""
        if value is None:
            return
        self.measured += 1
        if math.isnan(value):
            return
        if math.isinf(self._ref) or value < self._ref * (1 - self.min_improvement):  # the first pass is a gain
            self._ref, self._last_gain = value, self.measured
        self.best = min(self.best, value)

    @property
    def exhausted(self) -> bool:
        return (self.patience is not None and math.isfinite(self.best)
                and self.measured - self._last_gain >= self.patience)


def warm_starts(store: Any, key: Any, limit: int = 3) -> list[dict[str, Any]]:
    """The configs of the ``limit`` nearest tuned neighbours of ``key`` in ``store`` (same GPU, kernel and its
    hash, toolchain, dtype, causal flag and head dim; the dispatcher's distance), nearest first, deduplicated."""
    from ._dispatch import _distance

    fields = ("gpu", "kernel", "kernel_hash", "triton_version", "torch_version", "dtype", "causal", "head_dim")
    entries = [e for e in store.winners(**{f: getattr(key, f) for f in fields}) if e.key.id != key.id]
    entries.sort(key=lambda e: (_distance(e, key.seq_len, key.batch, key.heads), e.key.seq_len, e.key.batch))
    out: list[dict[str, Any]] = []
    for e in entries[:limit]:
        if config_id(e.config) not in {config_id(c) for c in out}:
            out.append(dict(e.config))
    return out


# -- study-search: how fast does the search find a near-best config? -------------------------------------------


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
    study = optuna.create_study(sampler=sampler, direction="minimize")
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


def run_study(points: Iterable[Any], profile: Any, *, seeds: int = 5, kernel: str = "attention_fwd",
              rep_ms: int = 100, trial_timeout_s: float | None = None, grid: str | None = None,
              on_point: Callable[[PointStudy], None] | None = None, compile_workers: int | None = None,
              on_config: Callable[[Any, dict[str, Any], Any], None] | None = None) -> dict[str, Any]:
    """Study-search over ``points``: ``{"provenance", "points": [PointStudy.as_dict()]}``, ready for JSON.

    Every trial runs in a worker process (:class:`autotune._worker.TrialWorker`), gated like a sweep's; the
    cache is neither read nor written. TPE's replays use the sweep's sampler settings for its default trial count.
    ``compile_workers`` processes compile the configs ahead of timing, as in a sweep; ``on_config(point, config,
    outcome)`` follows each timed config.
    """
    from ._compile_pool import CompilePool, default_workers
    from kernels import get_family
    from search_spaces import load_space

    from ._profiles import device_identity
    from ._sweep import DEFAULT_TRIALS
    from ._toolchain import provenance
    from ._worker import TrialWorker

    family = get_family(kernel)
    space = load_space(family.space, profile.name if profile.interpreter else "default")
    trials = DEFAULT_TRIALS["cpu" if profile.interpreter else "gpu"]
    startup = max(3, min(10, trials // 3))
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
