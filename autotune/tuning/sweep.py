"""A sweep: at each point, every candidate (our kernel families and the backends) tuned and gated; the fastest
correct one is what get_kernel serves.

Our families: one seeded Optuna study per point and family, every trial gated in a worker process, the fastest
passing config kept. Backends (PyTorch's SDPA backends, FlashAttention-4) have nothing to tune: one gated and
timed trial each. Nothing tuned is lost and nothing is done twice. Studies live in an Optuna journal next to
the cache (``<db>.optuna.log``, safe for several processes); every trial is written to the cache's trials table
before Optuna is told, and the trials table is the record of what was run. So a sweep killed at any moment and
started again with the same arguments skips the (point, candidate) keys that have a winner, and at the others
runs only the configs not yet recorded (a key whose budget was spent without a passing config counts as
done). Proposals that break a rule are told to Optuna as PRUNED but never compiled nor recorded as trials
(``search.Proposer``).

Several processes may sweep into one cache: each claims a key before tuning it (``worker.PointClaim``, an
``flock`` that the kernel drops when its process dies, even by kill -9), and comes back at the end to the keys
others were tuning. A winner is replaced only by a faster passing config, but at a point where several
candidates have winners the sweep ends by timing them again in turns and stores those figures (``faceoff``).

Optuna is imported here, inside the functions, never by ``import flashcore.autotune``: run time does not pay for it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from flashcore.cache import CacheKey, CacheStore, Entry, TrialRecord, figures_of
from flashcore.kernels import KernelFamily, default_family, families, get_family, load_space

from ..core.problem import Point
from ..core.profiles import device_identity
from ..core.toolchain import make_key, now_iso, versions
from .compile_pool import CompilePool, default_workers
from .faceoff import face_off
from .options import Hooks, SweepOptions, takes
from .search import Patience, Proposer, config_id, tell, tpe_sampler, warm_starts
from .storage import default_storage
from .trial import TrialOutcome, prepare, run_trial
from .worker import PointClaim, TrialWorker, WorkerError

DETERMINISTIC = ("compile_error", "resources", "gate_failed")  # failures another study of the key may trust


@dataclass
class PointResult:
    """What tuning one candidate at one point produced (``trials`` includes those of an earlier, interrupted run).

    ``invalid`` counts the proposals that broke a rule or were pruned by a failure this run (never compiled, not
    trials); ``pruned`` lists (config, "pruned by failure of <config>"). ``stopped`` says why the study ended:
    "trials" (budget spent), "patience" (stopping rule), "space" (nothing valid left) or "time budget" (the
    sweep's time ran out: the key is not tuned, no winner was written, and a later sweep resumes it).
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
    def kernel(self) -> str:
        return self.key.kernel

    @property
    def failures(self) -> int:
        return sum(1 for t in self.trials if t.status not in ("ok", "invalid"))


class _Runner:
    """Where a trial runs: the worker process (isolated), else this process (tests); compiled ahead by ``pool``."""

    def __init__(self, opts: SweepOptions, worker: TrialWorker | None, pool: CompilePool | None):
        self.opts, self.worker, self.pool = opts, worker, pool
        self._ctx = None

    def run(self, point: Point, family: KernelFamily, space: Any, config: dict[str, Any]) -> tuple[TrialOutcome, float]:
        """(outcome, seconds spent waiting for the compile pool)."""
        t0 = time.perf_counter()
        rejected = None
        if self.pool is not None and self.pool.takes(family):
            timeout = self.worker.timeout_s if self.worker else 120.0
            rejected = self.pool.rejection(point, config, timeout, family)
        waited = time.perf_counter() - t0
        if rejected is not None:
            return rejected, waited
        if self.worker is not None:
            return self.worker.bind(point, family).run(config), waited
        ctx = self._ctx
        if ctx is None or ctx.point != point or ctx.family.name != family.name:
            ctx = self._ctx = prepare(point, family, self.opts.profile, space, self.opts.seed, base=ctx)
        return run_trial(ctx, config, rep_ms=self.opts.rep_ms), waited


def tune_point(point: Point, store: CacheStore, opts: SweepOptions, *, kernel: str | KernelFamily | None = None,
               worker: TrialWorker | None = None, pool: CompilePool | None = None, deadline: float | None = None,
               on_trial=None) -> PointResult:
    """Tune one candidate at ``point``: a seeded TPE study for our kernel families (up to ``opts.n_trials``
    measured configs, warm starts and the default first), one trial for a backend.

    Only valid configs not yet run are proposed (``search.Proposer``): the winners of the nearest tuned
    neighbours (``opts.warm_start``), then the space's default, then TPE's proposals. Each runs on NaN-poisoned
    output, gated against fp32 and timed, in ``worker`` (or a worker of its own; in this process with
    ``opts.isolate=False``, for tests only). Failures (crashes and timeouts of the worker included) are
    recorded with their reason, told to Optuna as failed so they can never win, and never run again at this
    point (compile, resources and gate failures of the key's other studies included, unless ``opts.retune``); a
    resources failure prunes the configs it dominates. The study stops at the trial budget, by the patience
    rule, or at ``deadline`` (``time.monotonic()``; the key then gets no winner and resumes later). The fastest
    passing config becomes the key's winner unless the cache already holds a faster one.

    The study is resumed if it exists: configs it already recorded are not run again; ``opts.retune`` starts a
    new study instead. ``pool`` compiles the point's valid configs ahead of timing; a config it cannot compile
    is recorded as such without a run. ``on_trial(point, record)`` follows each trial.
    """
    kernel = default_family() if kernel is None else kernel
    family = get_family(kernel) if isinstance(kernel, str) else kernel
    gpu, cc = device_identity(opts.profile)
    key = make_key(point, family, gpu, cc)
    own = worker is None and opts.isolate
    if own:
        worker = TrialWorker(family, opts.profile, seed=opts.seed, timeout_s=opts.trial_timeout_s, rep_ms=opts.rep_ms)
    try:
        runner = _Runner(opts, worker, pool)
        if family.kind == "backend":
            return _try_backend(point, family, key, store, runner, deadline, on_trial, retime=opts.retune)
        return _study(point, family, key, store, opts, runner, deadline, on_trial)
    finally:
        if own and worker is not None:
            worker.close()


def _try_backend(point, family, key, store, runner, deadline, on_trial, retime: bool = False) -> PointResult:
    """A backend's one trial at ``point`` (its config is ``{}``), recorded like any other. ``retime``
    (``--retune``): the new measurement replaces the key's winner even where the old one was faster: a backend
    has one config, so an old figure that differs is a stale measurement (another timing method, clocks)."""
    result = PointResult(point, key, valid_configs=1)
    if deadline is not None and time.monotonic() >= deadline:
        result.stopped = "time budget"
        return result
    outcome, _ = runner.run(point, family, None, {})
    record = _record(key, {}, outcome, f"{key.id}-backend", None, {"process": f"{socket.gethostname()}:{os.getpid()}"})
    store.add_trial(record)
    result.trials.append(record)
    if on_trial:
        on_trial(point, record)
    result.stopped = "trials"
    if record.status == "ok" and record.median_us is not None:
        result.best = record
        store.put_winner(Entry.from_trial(record), replace=retime)
    return result


def _study(point, family, key, store, opts: SweepOptions, runner: _Runner, deadline, on_trial) -> PointResult:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    profile, trials = opts.profile, opts.n_trials
    space = load_space(family.space, profile.name)
    candidates = space.candidates(point, profile)
    result = PointResult(point, key, valid_configs=len(candidates))
    # the space's digest: a study cannot take new values for a parameter, so an edited space starts afresh
    digest = hashlib.sha256(json.dumps(space.params, default=str).encode()).hexdigest()[:8]
    study_name = f"{key.id}-seed{opts.seed}-space{digest}"
    if opts.retune:
        study_name += f"-retune-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{os.getpid()}"
    storage = opts.storage if opts.storage is not None else default_storage(store)
    study = optuna.create_study(storage=storage, sampler=tpe_sampler(opts.seed, trials), study_name=study_name,
                                direction="minimize", load_if_exists=True)

    recorded = store.trials(key)
    result.trials = [t for t in recorded if t.study == study_name]
    result.resumed = len(result.trials)
    _catch_up(study, space, result.trials)
    proposer = Proposer(study, space.params, candidates)
    stop = Patience(opts.patience, opts.min_improvement)
    for rec in recorded:
        if rec.study == study_name or (not opts.retune and rec.status in DETERMINISTIC):
            proposer.note(rec.config, _value(rec), rec.status, rec.reason)
        if rec.study == study_name:
            stop.add(_value(rec))
    proposer.seed((warm_starts(store, key) if opts.warm_start else []) + [space.default_for(point, profile)])
    if len(candidates) <= trials:  # the whole valid space fits in the budget: try all of it
        proposer.seed(candidates)
    budget = min(trials, len(candidates))
    measured = stop.measured
    origin = {"process": f"{socket.gethostname()}:{os.getpid()}"}
    if runner.pool is not None and runner.pool.takes(family) and measured < budget:  # what the study asks first
        runner.pool.ahead(point, [c for c in proposer.queue if config_id(c) in proposer.untried]
                          + list(proposer.untried.values()), family)
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
        outcome, waited = runner.run(point, family, space, config)
        spent = {"ask_s": round(t1 - t0, 4), "compile_wait_s": round(waited, 4),
                 "run_s": round(time.perf_counter() - t1 - waited, 4)}  # where a sweep's time goes
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

    result.invalid = proposer.invalid
    result.pruned = [(dict(cid), why) for cid, why in proposer.pruned.items()]
    result.stopped = result.stopped or ("patience" if stop.exhausted else "trials" if measured >= budget else "space")
    passing = [t for t in result.trials if t.status == "ok" and t.median_us is not None]
    if passing and result.stopped != "time budget":
        result.best = min(passing, key=lambda t: t.median_us)
        store.put_winner(Entry.from_trial(result.best))
    return result


def sweep(points: Iterable[Point], store: CacheStore, opts: SweepOptions, hooks: Hooks | None = None) -> list[PointResult]:
    """Tune every candidate (``opts.candidates``) at every point, one worker process for the whole sweep; results
    come back in the order of ``points``, then of candidates.

    Keys the cache already has a current winner for are skipped unless ``opts.retune``. A key another process
    has claimed is left for later (``hooks.on_wait(point)``) and taken up once that process releases it, when it
    usually has a winner. After ``opts.time_budget_s`` seconds no trial starts: the keys not finished come back
    with ``stopped="time budget"`` and no winner, and a later sweep resumes them. ``opts.compile_workers``
    processes compile configs ahead of timing (default :func:`compile_pool.default_workers`; 0: each config
    compiles when it is timed).
    """
    hooks = hooks or Hooks()
    profile = opts.profile
    gpu, cc = device_identity(profile)
    points = list(points)
    jobs = [(point, family) for point in points for family in opts.candidates(point)]
    results: dict[int, PointResult] = {}
    first = jobs[0][1] if jobs else get_family(default_family())
    worker = (TrialWorker(first, profile, seed=opts.seed, timeout_s=opts.trial_timeout_s, rep_ms=opts.rep_ms)
              if opts.isolate else None)
    deadline = None if opts.time_budget_s is None else time.monotonic() + opts.time_budget_s
    n_compile = default_workers(profile.interpreter) if opts.compile_workers is None else opts.compile_workers
    compiling = [f for _, f in jobs if f.precompiler]
    pool = CompilePool(compiling[0], n_compile) if n_compile and opts.isolate and compiling else None
    announced: set[int] = set()

    def finish(i: int, res: PointResult) -> None:
        results[i] = res
        if hooks.on_done:
            hooks.on_done(res)

    def announce(i: int) -> None:
        index = points.index(jobs[i][0])
        if index not in announced and hooks.on_point:
            announced.add(index)
            hooks.on_point(jobs[i][0], index)

    def take(i: int) -> bool:
        point, family = jobs[i]
        key = make_key(point, family, gpu, cc)
        res = None if opts.retune else cached(point, key, store)
        if res is None:
            if deadline is not None and time.monotonic() >= deadline:
                finish(i, PointResult(point, key, stopped="time budget"))
                return True
            claim = PointClaim(store, key)
            if not claim.acquire():
                return False
            try:  # the process that held the claim may have just finished the key
                res = None if opts.retune else cached(point, key, store)
                if res is None:
                    announce(i)
                    try:
                        res = tune_point(point, store, opts, kernel=family, worker=worker, pool=pool,
                                         deadline=deadline, on_trial=hooks.on_trial)
                    except WorkerError as exc:
                        res = PointResult(point, key, error=str(exc))
            finally:
                claim.release()
        else:
            announce(i)
        finish(i, res)
        return True

    try:
        if pool is not None:  # the whole grid's configs, in the background, once per compiled kernel
            for point, family in jobs:
                if family.precompiler and (opts.retune or store.get_winner(make_key(point, family, gpu, cc)) is None):
                    space = load_space(family.space, profile.name)
                    pool.behind(point, space.candidates(point, profile), family)
        waiting = []
        for i in range(len(jobs)):
            if not take(i):
                waiting.append(i)
                if hooks.on_wait:
                    hooks.on_wait(jobs[i][0])
        while waiting:
            time.sleep(opts.poll_s)
            if deadline is not None and time.monotonic() >= deadline:
                for i in waiting:
                    point, family = jobs[i]
                    finish(i, PointResult(point, make_key(point, family, gpu, cc), stopped="time budget"))
                break
            waiting = [i for i in waiting if not take(i)]
        if opts.faceoff_rounds and (deadline is None or time.monotonic() < deadline):
            _face_offs(jobs, results, store, opts, worker, gpu, cc)
    finally:
        if worker is not None:
            worker.close()
        if pool is not None:
            pool.close()
    return [results[i] for i in sorted(results)]


def _face_offs(jobs: list, results: dict[int, PointResult], store: CacheStore, opts: SweepOptions,
               worker: TrialWorker | None, gpu: str, cc: str) -> None:
    """At each point where several candidates have winners, one of them tuned now: ``faceoff.face_off`` (the
    winners timed again in turns where the sweep's trials run, ``_Runner``). The cache's
    winners of the point's other candidates take part too: ``--kernel sdpa_cudnn --retune`` faces the new
    cuDNN figure off against our kernel's stored one."""
    by_point: dict[Point, list[tuple[KernelFamily, PointResult]]] = {}
    for i, (point, family) in enumerate(jobs):
        if i in results:
            by_point.setdefault(point, []).append((family, results[i]))
    runner = _Runner(opts, worker, None)
    for point, group in by_point.items():
        seen = {f.name for f, _ in group}
        for family in families():
            if family.candidate and family.name not in seen and takes(family, point, opts.profile):
                res = cached(point, make_key(point, family, gpu, cc), store)
                if res is not None:
                    group.append((family, res))
        face_off(point, group, store, lambda family, config, p=point: runner.run(p, family, None, config)[0],
                 _record, rounds=opts.faceoff_rounds)


def cached(point: Point, key: CacheKey, store: CacheStore) -> PointResult | None:
    """The result of a point whose key already has a winner in ``store`` (None if it has none)."""
    existing = store.get_winner(key)
    if existing is None:
        return None
    res = PointResult(point, key, skipped=True)
    res.best = TrialRecord(key=key, config=existing.config, status="ok", **figures_of(existing),
                           created_at=existing.created_at, torch_version=existing.torch_version)
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


def _record(key: CacheKey, config: dict, outcome: TrialOutcome, study: str, number: int | None,
            origin: dict[str, Any]) -> TrialRecord:
    """The trial record of ``outcome``; ``extra["trial_id"]`` (a uuid) names this one measurement, so that two
    sweeps' trials of one study and config in the same second stay two trials when their caches are merged."""
    return TrialRecord(key=key, config=config, status=outcome.status, reason=outcome.reason, **figures_of(outcome),
                       max_abs_err=outcome.max_abs_err, study=study, trial_number=number, created_at=now_iso(),
                       extra={**outcome.extra, **origin, "trial_id": uuid.uuid4().hex}, torch_version=versions()[1])

