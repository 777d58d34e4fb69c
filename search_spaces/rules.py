"""Named validity rules: each says why a config cannot work (or cannot help) at a point, before compiling.

A rule is ``rule(config, point, profile) -> str | None``: None when the config passes, else a one-line reason.
``point`` has ``batch, heads, seq_len, head_dim, causal, dtype``; ``profile`` has ``smem_bytes`` and
``interpreter``. Rules are registered by name so that search-space files can list the ones that apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Rule = Callable[[Mapping[str, Any], Any, Any], "str | None"]
RULES: dict[str, Rule] = {}

_ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "fp8": 1}


def rule(fn: Rule) -> Rule:
    """Register ``fn`` under its name."""
    RULES[fn.__name__] = fn
    return fn


def _pow2_at_least(n: int, floor: int = 16) -> int:
    p = floor
    while p < n:
        p *= 2
    return p


@rule
def causal_split_needs_causal(config, point, profile):
    """CAUSAL_SPLIT changes nothing in a non-causal kernel: trying it would time the same code twice."""
    if config.get("CAUSAL_SPLIT") and not point.causal:
        return "CAUSAL_SPLIT only applies to causal attention"
    return None


@rule
def tile_within_sequence(config, point, profile):
    """A tile larger than the padded sequence only computes padding."""
    cap = _pow2_at_least(point.seq_len)
    for name in ("BLOCK_M", "BLOCK_N"):
        if config[name] > cap:
            return f"{name}={config[name]} exceeds the sequence (S={point.seq_len}, padded {cap})"
    return None


@rule
def warps_fit_tile(config, point, profile):
    """Each warp needs at least 8 rows of the query tile (num_warps <= BLOCK_M / 8)."""
    if config["num_warps"] * 8 > config["BLOCK_M"]:
        return f"num_warps={config['num_warps']} is too many for BLOCK_M={config['BLOCK_M']}"
    return None


@rule
def register_budget(config, point, profile):
    """The fp32 accumulator and score tile must fit in registers: at most 192 fp32 values per thread."""
    d = _pow2_at_least(point.head_dim)
    per_thread = config["BLOCK_M"] * (d + config["BLOCK_N"]) / (32 * config["num_warps"])
    if per_thread > 192:
        return f"needs ~{per_thread:.0f} fp32 registers per thread for accumulators (limit 192)"
    return None


@rule
def shared_memory_budget(config, point, profile):
    """The Q tile plus num_stages buffers of K and V tiles must fit in the GPU's shared memory per block."""
    if profile.interpreter:
        return None
    d = _pow2_at_least(point.head_dim)
    elt = _ELEMENT_BYTES.get(point.dtype, 2)
    need = elt * (config["BLOCK_M"] * d + max(1, config["num_stages"]) * 2 * config["BLOCK_N"] * d)
    if need > profile.smem_bytes:
        return f"needs ~{need // 1024} KiB of shared memory (GPU has {profile.smem_bytes // 1024} KiB per block)"
    return None
