"""Re-validation of cached winners: is each config the current toolchain would serve still correct here?

Every winner whose key matches this device, Triton and torch versions and its kernel's current source (the
entries ``get_kernel`` may serve) is run once more through a trial worker and the correctness gate, without
the search space's rules (an imported config may come from another space) and without timing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cache import CacheStore, Entry
from kernels import get_family

from ._grids import Point
from ._profiles import GpuProfile, device_identity
from ._toolchain import versions
from ._worker import TrialWorker, WorkerError


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


def served_winners(store: CacheStore, profile: GpuProfile) -> list[Entry]:
    """The winners of ``store`` that this toolchain would serve on the device of ``profile``."""
    gpu, _ = device_identity(profile)
    triton_version, torch_version = versions()
    out = []
    for entry in store.winners(gpu=gpu, triton_version=triton_version, torch_version=torch_version):
        try:
            family = get_family(entry.key.kernel)
        except KeyError:  # a kernel this install does not have: never served
            continue
        if entry.key.kernel_hash == family.source_hash and _base_dtype(entry.key.dtype) in family.dtypes:
            out.append(entry)
    return out


def _base_dtype(dtype: str) -> str | None:
    """"fp8" for every FP8 budget label (validated under the entry's own budget), the dtype otherwise."""
    from cache import base_dtype

    try:
        return base_dtype(dtype)
    except ValueError:
        return None


def validate_winners(store: CacheStore, profile: GpuProfile, *, drop: bool = False,
                     timeout_s: float | None = None,
                     on_result: Callable[[Validation], None] | None = None) -> list[Validation]:
    """Gate every served winner again (one worker per kernel family); with ``drop``, delete those that fail.

    A config that crashes or hangs the worker fails like one that computes a wrong result.
    """
    entries = served_winners(store, profile)
    results: list[Validation] = []
    for kernel in sorted({e.key.kernel for e in entries}):
        with TrialWorker(get_family(kernel), profile, timeout_s=timeout_s) as worker:
            for entry in (e for e in entries if e.key.kernel == kernel):
                k = entry.key
                point = Point(k.batch, k.heads, k.seq_len, k.head_dim, k.causal, k.dtype)
                try:
                    outcome = worker.bind(point).run(dict(entry.config), time_it=False, rules=False)
                    verdict = Validation(entry, point, outcome.status, outcome.reason)
                except WorkerError as exc:
                    verdict = Validation(entry, point, "error", str(exc))
                if drop and not verdict.passed:
                    verdict.dropped = store.delete_winner(k)
                results.append(verdict)
                if on_result:
                    on_result(verdict)
    return results
