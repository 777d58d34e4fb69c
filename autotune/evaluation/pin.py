"""Pin a candidate at a point: write it into a cache as the point's winner on this device, untimed.

For benchmarks and tests that must know what get_kernel serves (a backend at one point, our kernel at another)
without a sweep: ``pin(db, point, family_name)`` makes the family's default config at ``point`` the winner
there; ``pin(db, point, "sdpa_cudnn")`` the cuDNN backend. The entry's figures are placeholders (``median_us``):
nothing here was measured, so never ship a cache written this way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flashcore.cache import CacheStore, Entry
from flashcore.kernels import get_family

from ..core.problem import Point
from ..core.profiles import device_identity, resolve_profile, serving_profile
from ..core.toolchain import make_key, now_iso, versions


def pin(db: str | Path, point: Point, kernel: str, config: dict[str, Any] | None = None, *,
        median_us: float = 1.0) -> Entry:
    """Write ``kernel`` with ``config`` (a backend: ``{}``; one of our families: its default at ``point`` when
    None) as the winner at ``point`` on the current device (the CPU interpreter without one); return the entry."""
    from flashcore.kernels import load_space

    family = get_family(kernel)
    profile = resolve_profile("auto")
    gpu, cc = device_identity(profile)
    if config is None:
        config = {} if family.kind == "backend" else load_space(
            family.space, profile.name).default_for(point, serving_profile(gpu))
    entry = Entry(make_key(point, family, gpu, cc), dict(config), median_us, median_us, median_us, 0.0, 0.0,
                  now_iso(), versions()[1])
    with CacheStore.open(db) as store:
        store.put_winner(entry)
    return entry
