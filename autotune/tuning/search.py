"""How a point's Optuna study proposes configs (shared by the sweep and ``autotune study-search``, which replays
it on exhaustive measurements: ``flashcore.autotune.evaluation.study_search``).

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.problem import distance, format_config

MONOTONE = ("BLOCK_M", "BLOCK_N", "num_stages")  # shared memory grows with each of these
FREE = ("num_warps",)  # shared memory per program does not depend on it
GENERALIZING = ("resources",)  # failure statuses that prune the configs they dominate


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


def startup_trials(trials: int) -> int:
    """TPE's random start-up trials for a study of ``trials`` measured configs (the sweep's and the replays')."""
    return max(3, min(10, trials // 3))


def tpe_sampler(seed: int, trials: int) -> Any:
    """The seeded TPE sampler of a study of ``trials`` measured configs."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(trials))


def warm_starts(store: Any, key: Any, limit: int = 3) -> list[dict[str, Any]]:
    """The configs of the ``limit`` nearest tuned neighbours of ``key`` in ``store`` (same GPU, kernel and its
    hash, Triton, dtype, mask and head dim; the dispatcher's distance), nearest first, deduplicated."""
    fields = ("gpu", "kernel", "kernel_hash", "triton_version", "dtype", "causal", "lower_right", "head_dim")
    entries = [e for e in store.winners(**{f: getattr(key, f) for f in fields}) if e.key.id != key.id]
    entries.sort(key=lambda e: (distance(e.key, key), e.key.seq_len, e.key.batch))
    out: list[dict[str, Any]] = []
    for e in entries[:limit]:
        if config_id(e.config) not in {config_id(c) for c in out}:
            out.append(dict(e.config))
    return out
