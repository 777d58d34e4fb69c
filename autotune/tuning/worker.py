"""Trial isolation: configs compile and run in a spawned worker process, never in the sweeping process.

A segfault, an ``os._exit``, a hang past the per-trial timeout, or an illegal memory access (after which the
CUDA context is dead) ends that one trial: it is reported as "crashed", "timeout" or "launch_error" with its
reason, the worker is replaced, and the sweep goes on. The worker makes a point's inputs and fp32 reference
once (:func:`autotune.tuning.trial.prepare`) and runs every trial sent to it with
:func:`autotune.tuning.trial.run_trial`.

Parent and worker talk in JSON over a pipe (``send_bytes``), so no trial result is ever unpickled.

Also here, the other inter-process plumbing of a sweep: :class:`Flock` and :class:`PointClaim`, which keep
several sweeping processes off each other's points and serialise their Optuna journal writes.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

from flashcore.cache import CacheKey, CacheStore
from flashcore.kernels import KernelFamily, interpreter

from ..core.errors import AutotuneError
from ..core.problem import Point
from ..core.profiles import GpuProfile
from .trial import TrialOutcome

DEFAULT_TIMEOUT_S = {"gpu": 120.0, "cpu": 900.0}  # the interpreter is ~1000x slower than a GPU
TIMEOUT_ENV = "FLASHCORE_TRIAL_TIMEOUT"
START_TIMEOUT_S = 900.0  # spawn, import torch/triton, make the inputs and the fp32 reference


class WorkerError(AutotuneError):
    """The worker could not prepare a point (its inputs or reference): no config is to blame."""


def default_timeout(profile: GpuProfile) -> float:
    """The per-trial timeout: $FLASHCORE_TRIAL_TIMEOUT (seconds) if set, else 120 s on a GPU, 900 s on cpu."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value <= 0:
            raise AutotuneError(f"{TIMEOUT_ENV} must be a positive number of seconds; got {text!r}")
        return value
    return DEFAULT_TIMEOUT_S["cpu" if profile.interpreter else "gpu"]


class TrialWorker:
    """A worker process that runs trials on one profile, replaced whenever one kills it.

    ``bind(point, family)`` chooses the point and the candidate (``family``, default the one the worker was made
    with; its inputs are made in the worker on the next run, once per point whatever the candidate),
    ``run(config)``
    returns the trial's :class:`TrialOutcome` and never raises because of the config. The process starts
    lazily, on the first run. Use it as a context manager, or call :meth:`close`.

    The worker is started with multiprocessing's "spawn": a script that tunes through it (``tune_point``,
    ``sweep``) must guard its entry point with ``if __name__ == "__main__":``, or the worker runs it again
    and dies while preparing (WorkerError). ``autotune`` and pytest need nothing.
    """

    def __init__(self, family: KernelFamily, profile: GpuProfile, *, seed: int = 0,
                 timeout_s: float | None = None, start_timeout_s: float = START_TIMEOUT_S,
                 rep_ms: int = 100) -> None:
        self.family = family
        self.profile = profile
        self.seed = seed
        self.timeout_s = default_timeout(profile) if timeout_s is None else float(timeout_s)
        self.start_timeout_s = start_timeout_s
        self.rep_ms = rep_ms
        self.point: Point | None = None
        self._bound: KernelFamily = family
        self.started = 0  # worker processes started: more than one means some were replaced
        self._proc: Any = None  # multiprocessing.context.SpawnProcess
        self._conn: Connection | None = None
        self._prepared: tuple[Point, str] | None = None

    # -- public --------------------------------------------------------------------------------------------

    def bind(self, point: Point, family: KernelFamily | None = None) -> TrialWorker:
        """Run the next trials at ``point``, of ``family`` (default: the worker's own)."""
        self.point = point
        self._bound = family or self.family
        return self

    def run(self, config: dict[str, Any], *, time_it: bool = True, rules: bool = True) -> TrialOutcome:
        """Run ``config`` at the bound point in the worker; the outcome says how it ended.

        ``time_it`` and ``rules`` are passed to :func:`autotune.tuning.trial.run_trial`.
        Raises WorkerError only when the point itself cannot be prepared (not a config's fault).
        """
        if self.point is None:
            raise AutotuneError("TrialWorker.run() before bind(point)")
        self._ensure_ready()
        assert self._conn is not None
        try:
            self._conn.send_bytes(_dump({"op": "trial", "config": config, "rep_ms": self.rep_ms,
                                         "time_it": time_it, "rules": rules}))
        except OSError:
            return self._died("while receiving the config")
        if not self._conn.poll(self.timeout_s):
            self._kill()
            return TrialOutcome("timeout", f"no result after {self.timeout_s:g} s; the worker was killed and replaced")
        try:
            reply = json.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            return self._died("while running the config")
        outcome = TrialOutcome(**reply["outcome"])
        if outcome.fatal:
            self._kill()  # the device may be unusable for anything else in that process
            outcome.extra["worker_replaced"] = True
        return outcome

    def close(self) -> None:
        """Stop the worker (politely, then by force). Closing twice is fine."""
        if self._proc is None:
            return
        try:
            assert self._conn is not None
            self._conn.send_bytes(_dump({"op": "close"}))
        except OSError:
            pass
        self._proc.join(5)
        self._kill()

    def __enter__(self) -> TrialWorker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------------------

    def _ensure_ready(self) -> None:
        if self._proc is None or not self._proc.is_alive():
            self._kill()
            self._start()
        if self._prepared != (self.point, self._bound.name):
            self._request({"op": "point", "point": dataclasses.asdict(self.point),
                           "family": dataclasses.asdict(self._bound)}, "prepare")
            self._prepared = (self.point, self._bound.name)

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        spec = {"profile": dataclasses.asdict(self.profile), "seed": self.seed,
                "triton_interpret": interpreter.value(), "parent": os.getpid()}
        proc = ctx.Process(target=serve, args=(child, json.dumps(spec)), daemon=True,
                           name=f"flashcore-trial-worker-{self.family.name}")
        proc.start()
        child.close()
        self._proc, self._conn, self._prepared = proc, parent, None
        self.started += 1

    def _request(self, message: dict[str, Any], what: str) -> None:
        assert self._conn is not None
        try:
            self._conn.send_bytes(_dump(message))
            if not self._conn.poll(self.start_timeout_s):
                self._kill()
                raise WorkerError(f"the trial worker did not {what} {self.point.label if self.point else ''} "
                                  f"within {self.start_timeout_s:g} s")
            reply = json.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            code = self._exit_text()
            self._kill()
            raise WorkerError(f"the trial worker died while trying to {what} "
                              f"{self.point.label if self.point else ''} ({code})") from None
        if not reply.get("ok"):
            self._kill()
            raise WorkerError(f"cannot {what} {self.point.label if self.point else ''}: {reply.get('error')}")

    def _died(self, when: str) -> TrialOutcome:
        code = self._exit_text()
        self._kill()
        return TrialOutcome("crashed", f"the worker process died {when} ({code}); it was replaced")

    def _exit_text(self) -> str:
        if self._proc is None:
            return "no process"
        self._proc.join(5)
        code = self._proc.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"signal {signal.Signals(-code).name}"
            except ValueError:
                return f"signal {-code}"
        return f"exit code {code}"

    def _kill(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc, self._conn, self._prepared = None, None, None
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(10)
        if conn is not None:
            conn.close()


class Flock:
    """An exclusive ``flock`` on a file among processes; the kernel drops it when its holder dies (kill -9 too).

    The file stays after release: deleting it would race with the next holder. No path: always granted.
    """

    def __init__(self, path: str | Path | None, *, blocking: bool = True) -> None:
        self.path = None if path is None else Path(path)
        self.blocking = blocking
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock (waiting for it if ``blocking``); return whether we hold it now."""
        if self.path is None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the lock up; releasing twice is fine."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class PointClaim(Flock):
    """A process's claim on one point of a shared cache: ``<db>.claims/<key id>.lock``, never waited for."""

    def __init__(self, store: CacheStore, key: CacheKey) -> None:
        path = None if store.path is None else Path(f"{store.path}.claims") / f"{key.id}.lock"
        super().__init__(path, blocking=False)


def _tuples(value: Any) -> Any:
    """JSON's lists back to the tuples of a frozen dataclass (nested: a family's ``legacy_hashes``)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _dump(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def _exit_with_parent(parent: int) -> None:
    """End the worker soon after the sweep dies (kill -9 included), even in the middle of a hung trial."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def serve(conn: Connection, spec_json: str) -> None:
    """The worker's main loop (in the child): prepare points and run trials until told to stop or orphaned."""
    spec = json.loads(spec_json)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the sweep; the sweep stops its worker
    threading.Thread(target=_exit_with_parent, args=(spec["parent"],), daemon=True).start()
    from flashcore.kernels import load_space

    interpreter.apply(spec["triton_interpret"])  # before any kernel is decorated

    from .trial import prepare, run_trial

    profile = GpuProfile(**{k: _tuples(v) for k, v in spec["profile"].items()})
    ctx = None
    while True:
        try:
            message = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the sweep is gone
        op = message.get("op")
        if op == "close":
            return
        if op == "point":
            try:
                family = KernelFamily(**{k: _tuples(v) for k, v in message["family"].items()})
                space = (load_space(family.space, profile.name)
                         if family.space else None)
                ctx = prepare(Point(**message["point"]), family, profile, space, spec["seed"], base=ctx)
                reply: dict[str, Any] = {"ok": True}
            except Exception as exc:  # reported to the sweep as a WorkerError: the point cannot be tuned
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        elif op == "trial" and ctx is not None:
            try:
                outcome = run_trial(ctx, message["config"], rep_ms=message["rep_ms"], time_it=message["time_it"],
                                    rules=message["rules"])
            except Exception as exc:  # anything run_trial did not classify: this config broke the worker
                outcome = TrialOutcome("crashed", f"{type(exc).__name__}: {exc}"[:300], fatal=True)
            reply = {"ok": True, "outcome": dataclasses.asdict(outcome)}
        else:
            reply = {"ok": False, "error": f"unexpected message {op!r}"}
        try:
            conn.send_bytes(_dump(reply))
        except OSError:
            return
        if reply.get("outcome", {}).get("fatal"):
            return
