"""A sweep: one seeded Optuna study per point, every trial gated in a worker process, the fastest passing config kept.

Nothing tuned is lost and nothing is done twice. Studies live in an Optuna journal next to the cache
(``<db>.optuna.log``, safe for several processes); every trial is written to the cache's trials table before
Optuna is told, and the trials table is the record of what was run. So a sweep killed at any moment and
started again with the same arguments skips the points that have a winner, and at the others runs only the
configs not yet recorded (a point whose budget was spent without a passing config counts as done). Proposals
that break a rule are told to Optuna as PRUNED but never compiled nor recorded as trials (``_study.Proposer``).

Several processes may sweep into one cache: each claims a point before tuning it (``_worker.PointClaim``, an
``flock`` that the kernel drops when its process dies, even by kill -9), and comes back at the end to the
points others were tuning. A winner is replaced only by a faster passing config.

Optuna is imported here, inside the functions, never by ``import autotune``: run time does not pay for it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cache import CacheKey, CacheStore, Entry, TrialRecord
from kernels import KernelFamily, get_family
from search_spaces import load_space

from ._compile_pool import CompilePool, default_workers
from ._grids import Point
from ._profiles import GpuProfile, device_identity
from ._study import Patience, Proposer, config_id, tell, warm_starts
from ._toolchain import make_key, now_iso
from ._trial import TrialOutcome, prepare, run_trial
from ._worker import Flock, PointClaim, TrialWorker, WorkerError

DEFAULT_TRIALS = {"gpu": 30, "cpu": 6}


@dataclass
class PointResult:
    """What tuning one point produced (``trials`` includes those recorded by an earlier, interrupted run).

    ``invalid`` counts the proposals that broke a rule or were pruned by a failure this run (never compiled, not
    trials); ``pruned`` lists (config, "pruned by failure of <config>"). ``stopped`` says why the study ended:
    "trials" (budget spent), "patience" (stopping rule), "space" (nothing valid left) or "time budget" (the
    sweep's time ran out: the point is not tuned, no winner was written, and a later sweep resumes it).
    """

    point: Point
    key: CacheKey
    trials: list[TrialRecord] = field(default_factory=list)
    best: TrialRecord | None = None
    valid_configs: int = 0
    skipped: bool = False  # already tuned in the cache, not re-run
    resumed: int = 0  # trials carried over from an earlier run of the same study
    error: str = ""  # the point could not be prepared (WorkerError); nothing was tuned
    invalid: int = 0
    pruned: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    stopped: str = ""

    @property
    def failures(self) -> int:
        return sum(1 for t in self.trials if t.status not in ("ok", "invalid"))


TrialCallback = Callable[[Point, TrialRecord], None]
DETERMINISTIC = ("compile_error", "resources", "gate_failed")  # failures another study of the key may trust


def tune_point(point: Point, *, profile: GpuProfile, store: CacheStore, trials: int, seed: int = 0,
               kernel: str | KernelFamily = "attention_fwd", on_trial: TrialCallback | None = None,
               rep_ms: int = 100, isolate: bool = True, worker: TrialWorker | None = None,
               trial_timeout_s: float | None = None, fresh: bool = False, patience: int | None = None,
               min_improvement: float = 0.02, deadline: float | None = None,
               warm_start: bool = True, storage: Any = None, pool: CompilePool | None = None) -> PointResult:
    """Run one seeded TPE study at ``point``: up to ``trials`` measured configs, warm starts and the default first.

    Only valid configs not yet run are proposed (``_study.Proposer``): the winners of the nearest tuned
    neighbours (``warm_start``), then the space's default, then TPE's proposals. Each runs on NaN-poisoned
    output, gated against fp32 and timed, in ``worker`` (or a worker of its own; in this process with
    ``isolate=False``, for tests only). Failures (crashes and timeouts of the worker included) are recorded with
    their reason, told to Optuna as failed so they can never win, and never run again at this point (compile,
    resources and gate failures of the key's other studies included, unless ``fresh``); a resources failure
    prunes the configs it dominates. The study stops at ``trials``, when the best has not improved by more
    than ``min_improvement`` over ``patience`` measured trials, or at ``deadline`` (``time.monotonic()``; the
    point then gets no winner and resumes later). The fastest passing config becomes the key's winner unless
    the cache already holds a faster one.

    The study is resumed if it exists: configs it already recorded are not run again. ``fresh`` starts a
    new study instead (``--retune``). ``storage``: the Optuna storage of the study (:func:`make_storage`);
    default the journal file next to the cache (:func:`study_journal`). ``pool``: compiles the point's valid
    configs ahead of timing (:class:`autotune._compile_pool.CompilePool`); a config it cannot compile is
    recorded as such without a run.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    family = get_family(kernel) if isinstance(kernel, str) else kernel
    space = load_space(family.space, profile.name if profile.interpreter else "default")
    gpu, cc = device_identity(profile)
    key = make_key(point, family, gpu, cc)
    candidates = space.candidates(point, profile)
    result = PointResult(point, key, valid_configs=len(candidates))
    # the space's digest: a study cannot take new values for a parameter, so an edited space starts afresh
    digest = hashlib.sha256(json.dumps(space.params, default=str).encode()).hexdigest()[:8]
    study_name = f"{key.id}-seed{seed}-space{digest}"
    if fresh:
        study_name += f"-retune-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{os.getpid()}"
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, trials // 3)))
    study = optuna.create_study(storage=storage if storage is not None else _storage(store), sampler=sampler,
                                study_name=study_name,
                                direction="minimize", load_if_exists=True)

    recorded = store.trials(key)
    result.trials = [t for t in recorded if t.study == study_name]
    result.resumed = len(result.trials)
    _catch_up(study, space, result.trials)
    proposer = Proposer(study, space.params, candidates)
    stop = Patience(patience, min_improvement)
    for rec in recorded:
        if rec.study == study_name or (not fresh and rec.status in DETERMINISTIC):
            proposer.note(rec.config, _value(rec), rec.status, rec.reason)
        if rec.study == study_name:
            stop.add(_value(rec))
    proposer.seed((warm_starts(store, key) if warm_start else []) + [space.default_for(point, profile)])
    if len(candidates) <= trials:  # the whole valid space fits in the budget: try all of it
        proposer.seed(candidates)
    budget = min(trials, len(candidates))
    measured = stop.measured
    own = worker is None and isolate and measured < budget and bool(proposer.untried)
    if own:
        worker = TrialWorker(family, profile, seed=seed, timeout_s=trial_timeout_s, rep_ms=rep_ms)
    ctx = None
    origin = {"process": f"{socket.gethostname()}:{os.getpid()}"}
    if pool is not None and measured < budget:  # what the study asks first, then the rest of the space
        pool.ahead(point, [c for c in proposer.queue if config_id(c) in proposer.untried]
                   + list(proposer.untried.values()))
    try:
        while measured < budget and not stop.exhausted:
            if deadline is not None and time.monotonic() >= deadline:
                result.stopped = "time budget"
                break
            t0 = time.perf_counter()
            step = proposer.propose(max_asks=50 * max(1, trials))
            if step is None:
                break
            trial, config = step
            t1 = time.perf_counter()
            rejected = None if pool is None else pool.rejection(point, config, worker.timeout_s if worker else 120.0)
            t2 = time.perf_counter()
            if rejected is not None:
                outcome = rejected
            elif worker is not None:
                outcome = worker.bind(point).run(config)
            else:
                ctx = ctx or prepare(point, family, profile, space, seed)
                outcome = run_trial(ctx, config, rep_ms=rep_ms)
            spent = {"ask_s": round(t1 - t0, 4), "compile_wait_s": round(t2 - t1, 4),
                     "run_s": round(time.perf_counter() - t2, 4)}  # where a sweep's time goes
            record = _record(key, config, outcome, study_name, trial.number, {**origin, **spent})
            store.add_trial(record)  # before telling Optuna: the cache is the record of what ran
            result.trials.append(record)
            if on_trial:
                on_trial(point, record)
            value = _value(record)
            proposer.note(config, value, record.status, record.reason)
            stop.add(value)
            measured += value is not None
            tell(study, trial, value, pruned=value is None)
    finally:
        if own and worker is not None:
            worker.close()

    result.invalid = proposer.invalid
    result.pruned = [(dict(cid), why) for cid, why in proposer.pruned.items()]
    result.stopped = result.stopped or ("patience" if stop.exhausted else "trials" if measured >= budget else "space")
    passing = [t for t in result.trials if t.status == "ok" and t.median_us is not None]
    if passing and result.stopped != "time budget":
        result.best = min(passing, key=lambda t: t.median_us)
        store.put_winner(to_entry(result.best))
    return result


def sweep(points: Iterable[Point], *, profile: GpuProfile, store: CacheStore, trials: int | None = None,
          seed: int = 0, kernel: str | KernelFamily = "attention_fwd", retune: bool = False,
          on_point: Callable[[Point, int], None] | None = None, on_trial: TrialCallback | None = None,
          on_done: Callable[[PointResult], None] | None = None, rep_ms: int = 100, isolate: bool = True,
          trial_timeout_s: float | None = None, on_wait: Callable[[Point], None] | None = None,
          poll_s: float = 1.0, patience: int | None = None, min_improvement: float = 0.02,
          time_budget_s: float | None = None, warm_start: bool = True,
          storage: Any = None, compile_workers: int | None = None) -> list[PointResult]:
    """Tune every point, one worker process for the whole sweep; results come back in the order of ``points``.

    Points the cache already has a current winner for are skipped unless ``retune``. A point another process
    has claimed is left for later (``on_wait(point)``) and taken up once that process releases it, when it
    usually has a winner. ``on_point(point, index)``, ``on_trial`` and ``on_done`` let a front end show progress.
    ``patience``, ``min_improvement`` and ``warm_start`` go to :func:`tune_point`. After ``time_budget_s``
    seconds no trial starts: the points not finished come back with ``stopped="time budget"`` and no winner,
    and a later sweep resumes them. ``storage`` (an Optuna storage, see :func:`make_storage`) holds the studies
    instead of the journal file next to the cache. ``compile_workers`` processes compile configs ahead of
    timing (default :func:`autotune._compile_pool.default_workers`; 0: each config compiles when it is timed).
    """
    n = trials or DEFAULT_TRIALS["cpu" if profile.interpreter else "gpu"]
    family = get_family(kernel) if isinstance(kernel, str) else kernel
    gpu, cc = device_identity(profile)
    results: dict[int, PointResult] = {}
    worker = TrialWorker(family, profile, seed=seed, timeout_s=trial_timeout_s, rep_ms=rep_ms) if isolate else None
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    n_compile = default_workers(profile.interpreter) if compile_workers is None else compile_workers
    pool = CompilePool(family, n_compile) if n_compile and isolate and family.precompiler else None
    points = list(points)

    def finish(i: int, res: PointResult) -> None:
        results[i] = res
        if on_done:
            on_done(res)

    def take(i: int, point: Point) -> bool:
        key = make_key(point, family, gpu, cc)
        res = None if retune else _cached(point, key, store)
        if res is None:
            if deadline is not None and time.monotonic() >= deadline:
                finish(i, PointResult(point, key, stopped="time budget"))
                return True
            claim = PointClaim(store, key)
            if not claim.acquire():
                return False
            try:  # the process that held the claim may have just finished the point
                res = None if retune else _cached(point, key, store)
                if res is None:
                    if on_point:
                        on_point(point, i)
                    try:
                        res = tune_point(point, profile=profile, store=store, trials=n, seed=seed, kernel=family,
                                         on_trial=on_trial, rep_ms=rep_ms, isolate=isolate, worker=worker,
                                         fresh=retune, patience=patience, min_improvement=min_improvement,
                                         deadline=deadline, warm_start=warm_start, storage=storage,
                                         pool=pool)
                    except WorkerError as exc:
                        res = PointResult(point, key, error=str(exc))
            finally:
                claim.release()
        elif on_point:
            on_point(point, i)
        finish(i, res)
        return True

    try:
        if pool is not None:  # the whole grid's configs, in the background, once per compiled kernel
            space = load_space(family.space, profile.name if profile.interpreter else "default")
            for point in points:
                if retune or store.get_winner(make_key(point, family, gpu, cc)) is None:
                    pool.behind(point, space.candidates(point, profile))
        waiting = []
        for i, point in enumerate(points):
            if not take(i, point):
                waiting.append((i, point))
                if on_wait:
                    on_wait(point)
        while waiting:
            time.sleep(poll_s)
            if deadline is not None and time.monotonic() >= deadline:
                for i, point in waiting:
                    finish(i, PointResult(point, make_key(point, family, gpu, cc), stopped="time budget"))
                break
            waiting = [(i, point) for i, point in waiting if not take(i, point)]
    finally:
        if worker is not None:
            worker.close()
        if pool is not None:
            pool.close()
    return [results[i] for i in sorted(results)]


def to_entry(record: TrialRecord) -> Entry:
    """The winner entry made from a passing trial."""
    return Entry(key=record.key, config=record.config, median_us=record.median_us, p95_us=record.p95_us,
                 p99_us=record.p99_us, tflops=record.tflops, rel_err=record.rel_err, created_at=record.created_at)


def study_journal(store: CacheStore) -> Path | None:
    """The Optuna journal of the studies of ``store`` (None for an in-memory store)."""
    return None if store.path is None else Path(f"{store.path}.optuna.log")


def make_storage(url: str) -> Any:
    """The Optuna storage named by ``--storage``: ``journal:PATH`` (a journal file, flock-locked) or an RDB URL
    (``postgresql://user@host/db``, ``sqlite:///path``, ...) for :class:`optuna.storages.RDBStorage`.

    Raises ``AutotuneError`` (one line) for a malformed URL, a missing database driver or an unreachable server.
    """
    from ._errors import AutotuneError

    url = url.strip()
    if url.startswith("journal:"):
        path = url[len("journal:"):]
        if not path:
            raise AutotuneError("--storage journal:PATH needs a file path")
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(path, lock_obj=Flock(f"{path}.flock")))  # type: ignore[arg-type]
    if "://" not in url:
        raise AutotuneError(f"--storage {url!r}: expected an RDB URL (postgresql://user@host/db, sqlite:///file.db)"
                            " or journal:PATH")
    from optuna.storages import RDBStorage

    try:
        return RDBStorage(_with_driver(url))
    except ImportError as exc:
        raise AutotuneError(f"--storage: no database driver for {url.split('://')[0]}: {exc}") from None
    except Exception as exc:  # sqlalchemy's errors: bad URL, server down, authentication
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AutotuneError(f"--storage: cannot open {_redact(url)}: {msg}") from None


def _with_driver(url: str) -> str:
    """``postgresql://`` with the PostgreSQL driver that is installed: SQLAlchemy 2.1 defaults to psycopg (3),
    many hosts have psycopg2."""
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def _redact(url: str) -> str:
    """``url`` without its password."""
    import re

    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def _storage(store: CacheStore) -> Any:
    journal = study_journal(store)
    if journal is None:
        return None
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    # flock instead of Optuna's lock files, which a killed process leaves behind for their 30 s grace period
    lock = Flock(f"{journal}.flock")
    return JournalStorage(JournalFileBackend(str(journal), lock_obj=lock))  # type: ignore[arg-type]


def _cached(point: Point, key: CacheKey, store: CacheStore) -> PointResult | None:
    existing = store.get_winner(key)
    if existing is None:
        return None
    res = PointResult(point, key, skipped=True)
    res.best = TrialRecord(key=key, config=existing.config, status="ok", median_us=existing.median_us,
                           p95_us=existing.p95_us, p99_us=existing.p99_us, tflops=existing.tflops,
                           rel_err=existing.rel_err, created_at=existing.created_at)
    return res


def _value(rec: TrialRecord) -> float | None:
    if rec.status == "invalid":
        return None
    return rec.median_us if rec.status == "ok" and rec.median_us is not None else float("nan")


def _catch_up(study: Any, space: Any, records: list[TrialRecord]) -> None:
    """Tell the study the recorded trials it lacks (those run just before a kill, before Optuna was told)."""
    import optuna
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    known = {config_id(t.params) for t in study.get_trials(deepcopy=False, states=finished)}
    dists = {name: optuna.distributions.CategoricalDistribution(list(values)) for name, values in space.params}
    for rec in records:
        cid = config_id(rec.config)
        if cid in known or set(rec.config) != set(dists) or any(
                rec.config[n] not in d.choices for n, d in dists.items()):
            continue
        value = _value(rec)
        state = (TrialState.PRUNED if value is None else TrialState.FAIL if math.isnan(value)
                 else TrialState.COMPLETE)
        study.add_trial(optuna.trial.create_trial(params=dict(rec.config), distributions=dists, state=state,
                                                  value=value if state == TrialState.COMPLETE else None))
        known.add(cid)


def _record(key: CacheKey, config: dict, outcome: TrialOutcome, study: str, number: int,
            origin: dict[str, Any]) -> TrialRecord:
    return TrialRecord(key=key, config=config, status=outcome.status, reason=outcome.reason,
                       median_us=outcome.median_us, p95_us=outcome.p95_us, p99_us=outcome.p99_us,
                       tflops=outcome.tflops, rel_err=outcome.rel_err, max_abs_err=outcome.max_abs_err,
                       study=study, trial_number=number, created_at=now_iso(), extra={**outcome.extra, **origin})

