"""Re-validation of cached winners: is each candidate the current toolchain would serve still correct here?

Every winner of a cache, or of the tables shipped with the package, whose key matches this device and that this
process may serve (``core.toolchain.servable``: Triton and kernel source, or a backend's builds) is run once more
through a trial worker and the correctness gate, without the search space's rules (an imported config may come
from another space) and without timing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flashcore.cache import CacheStore, Entry
from flashcore.kernels import get_family

from ..core.problem import Point
from ..core.profiles import GpuProfile, device_identity
from ..core.toolchain import point_of, servable
from .worker import TrialWorker, WorkerError


@dataclass
class Validation:
    """The verdict on one served winner: ``status`` is "ok" when it still passes the gate."""

    entry: Entry
    point: Point
    status: str
    reason: str = ""
    dropped: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "ok"


def served_winners(entries: list[Entry], profile: GpuProfile) -> list[Entry]:
    """The ``entries`` (a cache's winners, a shipped table) that this process would serve on ``profile``'s device."""
    gpu, _ = device_identity(profile)
    out = []
    for entry in entries:
        try:
            family = get_family(entry.key.kernel)
        except KeyError:  # a kernel this install does not have: never served
            continue
        if entry.key.gpu == gpu and servable(entry.key, family) and _base_dtype(entry.key.dtype) in family.dtypes:
            out.append(entry)
    return out


def _base_dtype(dtype: str) -> str | None:
    """"fp8" for every FP8 budget label (validated under the entry's own budget), the dtype otherwise."""
    from flashcore.cache import base_dtype

    try:
        return base_dtype(dtype)
    except ValueError:
        return None


def validate_winners(store: CacheStore | None, profile: GpuProfile, *, drop: bool = False,
                     timeout_s: float | None = None, entries: list[Entry] | None = None,
                     on_result: Callable[[Validation], None] | None = None) -> list[Validation]:
    """Gate every served winner of ``store`` (or of ``entries``, a shipped table) again in one worker; with
    ``drop``, delete those of ``store`` that fail.

    A config that crashes or hangs the worker fails like one that computes a wrong result.
    """
    pending = served_winners(entries if entries is not None else store.winners(), profile)
    pending.sort(key=lambda e: (e.key.kernel, e.key.dtype, e.key.head_dim, e.key.seq_len, e.key.batch))
    results: list[Validation] = []
    if not pending:
        return results
    with TrialWorker(get_family(pending[0].key.kernel), profile, timeout_s=timeout_s) as worker:
        for entry in pending:
            point = point_of(entry.key)
            try:
                outcome = worker.bind(point, get_family(entry.key.kernel)).run(dict(entry.config), time_it=False,
                                                                               rules=False)
                verdict = Validation(entry, point, outcome.status, outcome.reason)
            except WorkerError as exc:
                verdict = Validation(entry, point, "error", str(exc))
            if drop and store is not None and entries is None and not verdict.passed:
                verdict.dropped = store.delete_winner(entry.key)
            results.append(verdict)
            if on_result:
                on_result(verdict)
    return results
