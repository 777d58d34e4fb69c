"""What a family may add to a trial (its extra steps: FP8's quantization, its own gate and figures), and the gate's
verdict that every gate returns.

A family names its hooks in its declaration (``KernelFamily.trial``, "module:object"); the generic trial runner
(autotune/tuning/trial.py) calls them and knows no family by name. Without hooks a trial launches the family's
launcher on the point's inputs and gates the output with the 16-bit gate (autotune/tuning/gate.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str  # "" when passed, else one line
    max_abs_err: float
    rel_err: float  # relative L2 error
    mismatched: int  # elements outside the element-wise tolerance


class TrialHooks:
    """A family's extra trial steps. ``ctx`` is the trial's point context (``autotune.tuning.trial.PointContext``:
    ``point``, ``q``, ``k``, ``v``, ``ref``, ``cuda`` and ``state``, a dict the hooks may keep per-point work in).

    ``baseline``: the 16-bit family this one is built on and is compared with (``autotune bench`` of its dtype)."""

    baseline: str | None = None
    bench_notes: dict[str, str] = {}  # what the bench's provenance says of the family's own columns

    def kernel_call(self, ctx: Any, config: dict[str, Any], out: Any) -> Callable[[], Any]:
        """The timed call of ``config`` at the context's point, writing into ``out`` (the steps before it, done
        here, are not timed). Raises ``KernelError`` for a config the launcher refuses."""
        raise NotImplementedError

    def verdict(self, ctx: Any, config: dict[str, Any], out: Any) -> tuple[GateResult, dict[str, Any]]:
        """The family's gate on ``out``, and the figures to record with the trial."""
        raise NotImplementedError

    def bench_figures(self, point: Any, config: dict[str, Any], q: Any, k: Any, v: Any, ref: Any, *,
                      time_fn: Callable[[str, Callable[[], Any]], None], outliers: bool = True,
                      seed: int = 0, tol: float | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        """The family's own columns of ``autotune bench`` for ``config`` on these inputs: (figures, errors);
        ``time_fn(provider, fn)`` times ``fn`` into the row's ``<provider>_*`` columns."""
        raise NotImplementedError
