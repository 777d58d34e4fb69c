"""What a sweep is asked to do (one options object for ``tune_point`` and ``sweep``), and which candidates compete at
a point."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flashcore.cache import base_dtype
from flashcore.kernels import KernelFamily, default_families, families, get_family
from flashcore.search_spaces import profile_arch

from ..core.problem import Point
from ..core.profiles import GpuProfile
from .faceoff import FACEOFF_ROUNDS

DEFAULT_TRIALS = {"gpu": 30, "cpu": 6}


@dataclass(frozen=True)
class SweepOptions:
    """How to tune: the target, the search budget, the timing, isolation and where studies live.

    ``kernels``: the candidates to tune (names of kernel families or backends); None: every one of ours that can
    compute a point in its dtype on this profile, and on a GPU the backends too (PyTorch SDPA's cuDNN, flash
    and memory-efficient backends; FlashAttention-4 where installed). ``trials`` measured configs per point and
    candidate (None: 30 on a GPU, 6 in the interpreter). ``patience`` / ``min_improvement``: stop a study when its
    best has not improved by more than that fraction over that many measured trials. ``time_budget_s``: no
    trial starts after it. ``isolate=False`` runs trials in this process (tests only). ``storage``: the Optuna
    storage (``storage.make_storage``), default a journal next to the cache. ``compile_workers``: processes
    compiling configs ahead of timing (None: one per core but one, on a GPU). ``faceoff_rounds``: at a point
    where several candidates won, the turns in which their winners are timed again side by side (0: none).
    """

    profile: GpuProfile
    trials: int | None = None
    seed: int = 0
    kernels: tuple[str | KernelFamily, ...] | None = None
    retune: bool = False
    rep_ms: int = 100
    isolate: bool = True
    trial_timeout_s: float | None = None
    patience: int | None = None
    min_improvement: float = 0.02
    time_budget_s: float | None = None
    warm_start: bool = True
    storage: Any = None
    compile_workers: int | None = None
    poll_s: float = 1.0
    faceoff_rounds: int = FACEOFF_ROUNDS  # turns of the winners' face-off at each point (faceoff.py); 0: none

    @property
    def n_trials(self) -> int:
        return self.trials or DEFAULT_TRIALS["cpu" if self.profile.interpreter else "gpu"]

    def candidates(self, point: Point) -> list[KernelFamily]:
        """The candidates that compete at ``point``: ``kernels`` (or the defaults above) that take its dtype and
        problem on this profile, in a stable order (ours first, then the backends)."""
        chosen = ([k if isinstance(k, KernelFamily) else get_family(k) for k in self.kernels] if self.kernels
                  else [f for f in families() if f.candidate])
        out = [f for f in chosen if takes(f, point, self.profile)]
        if not self.kernels and self.profile.interpreter:
            # on the interpreter a point is tuned with the first of our "default" families (the registry's order)
            # that can compute it: its timings say nothing about speed, so comparing families would only cost time
            order = default_families()
            ours = sorted((f for f in out if f.kind != "backend"),
                          key=lambda f: order.index(f.name) if f.name in order else 99)
            out = ours[:1]
        return sorted(out, key=lambda f: f.kind == "backend")


def takes(family: KernelFamily, point: Point, profile: GpuProfile) -> bool:
    """Whether ``family`` can compute ``point`` on ``profile``: its dtype, its problem (grouped-query heads,
    lengths), the architecture (backends and Hopper-only families need a GPU that has them)."""
    try:
        dtype = base_dtype(point.dtype)
    except ValueError:
        return False
    if dtype not in family.dtypes:
        return False
    if family.supports(point.heads, point.kv_heads, point.seq_len, point.kv_len, point.head_dim):
        return False
    return family.runs_on(profile_arch(profile))  # the interpreter runs plain Triton kernels only


@dataclass
class Hooks:
    """What a front end follows: ``on_point(point, index)`` when a point starts, ``on_trial(point, record)`` after
    each trial, ``on_done(result)`` per point and candidate, ``on_wait(point)`` when another process holds it."""

    on_point: Callable[[Point, int], None] | None = None
    on_trial: Callable[[Point, Any], None] | None = None
    on_done: Callable[[Any], None] | None = None
    on_wait: Callable[[Point], None] | None = None
