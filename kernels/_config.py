"""Checks shared by the launchers: the tile, warp and stage keys every kernel config carries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._errors import KernelInputError

POW2_TILES = {16, 32, 64, 128, 256}


def check_common(config: Mapping[str, Any], known: set[str]) -> None:
    """Raise KernelInputError for unknown keys or bad BLOCK_M / BLOCK_N / num_warps / num_stages values."""
    unknown = set(config) - known
    if unknown:
        raise KernelInputError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
    for key in ("BLOCK_M", "BLOCK_N"):
        if config.get(key) not in POW2_TILES or isinstance(config.get(key), bool):
            raise KernelInputError(f"{key} must be one of {sorted(POW2_TILES)}; got {config.get(key)!r}")
    if config.get("num_warps") not in (1, 2, 4, 8, 16) or isinstance(config.get("num_warps"), bool):
        raise KernelInputError(f"num_warps must be 1, 2, 4, 8 or 16; got {config.get('num_warps')!r}")
    stages = config.get("num_stages")
    if not isinstance(stages, int) or isinstance(stages, bool) or not 1 <= stages <= 8:
        raise KernelInputError(f"num_stages must be an int in 1..8; got {stages!r}")
