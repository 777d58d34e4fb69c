"""Compiling ahead of timing: CPU processes compile the configs a sweep will time next while the GPU times.

On the H100 a config takes 0.4-1 s to compile and milliseconds to time, so a sweep that compiles in its timing
worker spends most of its time compiling. :class:`CompilePool` runs the family's precompiler
(``KernelFamily.precompiler``, e.g. ``kernels/<family>/precompile.py``: Triton's own
``JITFunction.warmup`` on meta tensors) in a pool of spawned processes. The compiled kernels land in Triton's
on-disk cache ($TRITON_CACHE_DIR, shared by every process of the host), where the timing worker's launch finds
them and only loads them. The pool never replaces the timing worker's checks: whatever it compiles is still
launched, gated and timed there.

The sweep tells the pool, per point, every config it may time (``ahead``, in the order it will probably ask
for them); configs it is about to time jump that queue (``wait``). At most one job per process is in flight, so
an urgent config waits for one compile at most. A config the compiler rejects comes back "compile_error" and
is recorded without reaching the GPU. A pool process that dies (a compiler crash) takes the pool with it: the
pool is restarted, and the configs it was compiling are left to the timing worker, whose isolation deals with
them.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from ..core.problem import Point

TRUSTED = ("compile_error", "resources")  # verdicts of the pool recorded without a run on the GPU


def default_workers(interpreter: bool) -> int:
    """Compile processes by default: none under the interpreter (it compiles nothing), else one per CPU core
    but one (the timing worker's)."""
    return 0 if interpreter else max(1, (os.cpu_count() or 2) - 1)


@dataclass
class CompileOutcome:
    """How compiling one config ended: "ok", "skipped" (nothing to compile), or a KernelError's kind."""

    status: str
    reason: str = ""
    seconds: float = 0.0


@dataclass
class PoolStats:
    submitted: int = 0
    compiled: int = 0
    failed: int = 0
    restarts: int = 0
    waited_s: float = 0.0  # time the sweep spent waiting for a config it was about to time
    extra: dict[str, Any] = field(default_factory=dict)


def _point_key(point: Point, config: dict[str, Any]) -> tuple:
    return (point.label, tuple(sorted(config.items())))


def _shapes(point: Point) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(q shape, k/v shape) of a point, as a family's precompiler takes them."""
    return ((point.batch, point.heads, point.seq_len, point.head_dim),
            (point.batch, point.kv_heads, point.kv_len, point.head_dim))


class CompilePool:
    """A pool of ``workers`` spawned processes compiling configs ahead of timing, for ``family`` (each method
    takes ``family=`` another one: one pool serves every candidate of a sweep that has a precompiler).

    Contract: ``ahead(point, configs)`` queues configs (deduplicated, in order); ``wait(point, config,
    timeout_s)`` returns the :class:`CompileOutcome` of that config, compiling it next if it is not done, or None
    when the pool could not say in time (the timing worker then compiles it itself). Never raises because of
    a config. ``close()`` stops the processes. Use it as a context manager.
    """

    def __init__(self, family: Any, workers: int) -> None:
        if family.precompiler is None:
            raise ValueError(f"kernel family {family.name} has no precompiler")
        if workers < 1:
            raise ValueError("a compile pool needs at least one worker")
        self.family = family
        self.workers = workers
        self._keyfns: dict[str, Any] = {}  # family -> its compile_key: one job per compiled kernel, not per point
        self.stats = PoolStats()
        self._jobs: dict[tuple, Future] = {}
        self._backlog: deque[tuple[tuple, Any, Point, dict[str, Any]]] = deque()
        self._pending: set[Future] = set()
        self._executor: ProcessPoolExecutor | None = None

    # -- public --------------------------------------------------------------------------------------------

    def takes(self, family: Any) -> bool:
        """Whether this pool can compile ``family``'s configs (it has a precompiler)."""
        return family.precompiler is not None

    def ahead(self, point: Point, configs: list[dict[str, Any]], family: Any = None) -> None:
        """Queue ``configs`` of ``point`` for compiling, ahead of everything queued before (moving them up)."""
        jobs = self._fresh(family or self.family, point, configs, requeue=True)
        keys = {job[0] for job in jobs}
        self._backlog = deque(job for job in self._backlog if job[0] not in keys)
        self._backlog.extendleft(reversed(jobs))
        self._pump()

    def behind(self, point: Point, configs: list[dict[str, Any]], family: Any = None) -> None:
        """Queue ``configs`` of ``point`` for compiling, after everything queued before."""
        self._backlog.extend(self._fresh(family or self.family, point, configs))
        self._pump()

    def wait(self, point: Point, config: dict[str, Any], timeout_s: float,
             family: Any = None) -> CompileOutcome | None:
        """The outcome of compiling ``config`` at ``point``, compiling it now if needed; None if unknown."""
        family = family or self.family
        key = self._key(family, point, config)
        t0 = time.monotonic()
        try:
            fut = self._jobs.get(key) or self._submit(key, family, point, config)
            while True:
                try:
                    status, reason, seconds = fut.result(timeout=0.05)
                    return CompileOutcome(status, reason, seconds)
                except FutureTimeout:
                    self._pump()
                    if time.monotonic() - t0 > timeout_s:
                        return None
        except BrokenProcessPool:
            self._restart()
            return None
        except Exception as exc:  # a bug in the precompiler, not the config: the timing worker decides
            self.stats.extra["last_error"] = f"{type(exc).__name__}: {exc}"[:300]
            return None
        finally:
            self.stats.waited_s += time.monotonic() - t0

    def rejection(self, point: Point, config: dict[str, Any], timeout_s: float, family: Any = None) -> Any:
        """A trial outcome for ``config`` if the compiler rejected it (recorded without a GPU run), else None:
        the config is compiled (or the pool could not say) and goes to the timing worker."""
        from .trial import TrialOutcome

        compiled = self.wait(point, config, timeout_s, family)
        if compiled is None or compiled.status not in TRUSTED:
            return None
        return TrialOutcome(compiled.status, compiled.reason, extra={"compiled_by": "pool"})

    def close(self) -> None:
        """Stop the compile processes (jobs still queued are dropped). Closing twice is fine."""
        self._backlog.clear()
        if self._executor is not None:
            procs = list(getattr(self._executor, "_processes", {}).values())
            self._executor.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
            self._executor = None

    def __enter__(self) -> CompilePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------------------

    def _key(self, family: Any, point: Point, config: dict[str, Any]) -> tuple:
        if family.name not in self._keyfns:
            self._keyfns[family.name] = family.compile_key_fn()
        keyfn = self._keyfns[family.name]
        if keyfn is None:
            return (family.name, *_point_key(point, config))
        from ..core.problem import torch_dtype

        try:
            return (family.name, *keyfn(*_shapes(point), torch_dtype(point.dtype), point.causal, config,
                                        point.lower_right))
        except (ValueError, TypeError, KeyError):  # a config the launcher rejects: the job reports it
            return (family.name, *_point_key(point, config))

    def _fresh(self, family: Any, point: Point, configs: list[dict[str, Any]],
               requeue: bool = False) -> list[tuple[tuple, Any, Point, dict[str, Any]]]:
        """The jobs of ``configs`` not submitted (nor queued, unless ``requeue``), deduplicated, in order."""
        seen = set(self._jobs) | (set() if requeue else {job[0] for job in self._backlog})
        out = []
        for c in configs:
            key = self._key(family, point, c)
            if key not in seen:
                seen.add(key)
                out.append((key, family, point, dict(c)))
        return out

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            ctx = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_lower_priority)
        return self._executor

    def _submit(self, key: tuple, family: Any, point: Point, config: dict[str, Any]) -> Future:
        fut = self._pool().submit(_compile, family.precompiler, *_shapes(point), point.dtype, point.causal, config,
                                  point.lower_right)
        fut.add_done_callback(self._count)
        self._jobs[key] = fut
        self._pending.add(fut)
        self.stats.submitted += 1
        return fut

    def _count(self, fut: Future) -> None:
        if fut.cancelled() or fut.exception() is not None:  # a crash (restart) or a precompiler bug (wait)
            return
        status = fut.result()[0]
        if status == "ok":
            self.stats.compiled += 1
        elif status != "skipped":
            self.stats.failed += 1

    def _pump(self) -> None:
        """Submit queued configs while fewer jobs than processes are in flight."""
        self._pending = {f for f in self._pending if not f.done()}
        try:
            while self._backlog and len(self._pending) < self.workers:
                key, family, point, config = self._backlog.popleft()
                if key not in self._jobs:
                    self._submit(key, family, point, config)
        except BrokenProcessPool:
            self._restart()

    def _restart(self) -> None:
        """A compile process died: forget the jobs it took down and start a fresh pool on the next submit."""
        self.stats.restarts += 1
        self._jobs = {k: f for k, f in self._jobs.items() if f.done() and f.exception() is None}
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _lower_priority() -> None:
    """In a pool process: yield the CPU to the timing worker, whose launches must not wait for a core."""
    try:
        os.nice(10)
    except OSError:
        pass


def _compile(spec: str, q_shape: tuple[int, ...], kv_shape: tuple[int, ...], dtype: str, causal: bool,
             config: dict[str, Any], lower_right: bool = False) -> tuple[str, str, float]:
    """In a pool process: compile one config; (status, reason, seconds). Never raises for a config."""
    from flashcore.kernels import KernelError, ensure_backend
    from flashcore.kernels._family import resolve

    from ..core.problem import torch_dtype

    ensure_backend()
    precompile = resolve(spec)
    t0 = time.perf_counter()
    try:
        compiled = precompile(q_shape, kv_shape, torch_dtype(dtype), causal, config, lower_right)
    except KernelError as exc:
        return exc.kind, str(exc), time.perf_counter() - t0
    return ("ok" if compiled else "skipped"), "", time.perf_counter() - t0
