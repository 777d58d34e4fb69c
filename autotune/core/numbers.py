"""Small numeric helpers shared by the tuner and the benches."""

from __future__ import annotations

import math
from collections.abc import Iterable


def finite(x: float | None) -> float | None:
    """``x`` if it is a finite number, else None (JSON has no NaN or infinity)."""
    return x if x is not None and math.isfinite(x) else None


def geomean(values: Iterable[float]) -> float | None:
    """The geometric mean of the positive finite values, or None if there are none."""
    xs = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    return math.exp(sum(math.log(v) for v in xs) / len(xs)) if xs else None
