"""The GPU test tiers: `pytest -m "gpu and not slow"` is the fast tier (every kernel family, the gate, the served
path and a small sweep, in one device call), `pytest -m gpu` the whole suite. A parametrized GPU test keeps a
sample of its cases in the fast tier and marks the rest ``slow``, so the full list still runs under `-m gpu`.

On the H200 (pytest-xdist there; the timing tests alone, as other processes on the GPU would skew them):

    python -m pytest -m "gpu and not slow" -n 6 -p no:cacheprovider --ignore=tests/test_gpu_timing.py
    python -m pytest -m gpu -p no:cacheprovider tests/test_gpu_timing.py
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest


def tiered(cases: Sequence[Any], ids: Sequence[str], fast: Iterable[str], *, unpack: bool = False) -> list:
    """``cases`` as ``pytest.param``s with ``ids``: those whose id is in ``fast`` in both tiers, the others marked
    ``slow``. ``unpack``: each case is a tuple of the test's several arguments. A fast id that names no case is
    an error (the sample must not shrink silently when a list changes)."""
    fast = set(fast)
    unknown = fast - set(ids)
    if unknown:
        raise ValueError(f"fast ids {sorted(unknown)} name no case of {list(ids)}")
    return [pytest.param(*(case if unpack else (case,)), id=name, marks=() if name in fast else pytest.mark.slow)
            for case, name in zip(cases, ids, strict=True)]


def pytest_collection_finish(session) -> None:
    """Loaded as a plugin (``PYTHONPATH=tests pytest -p _tiers --collect-only``): each collected test's tier."""
    for item in session.items:
        print(f"TIER {'slow' if item.get_closest_marker('slow') else 'fast'} {item.nodeid}")
