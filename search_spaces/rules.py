"""The rule framework, the helpers every family's rules share, and the tile rules of the Triton tile kernels.

A rule is ``rule(config, point, profile) -> str | None``: None when the config passes, else a one-line reason.
``point`` has ``batch, heads, seq_len, head_dim, causal, dtype``; ``profile`` has ``smem_bytes``, ``sm_count``,
``interpreter`` and its architecture record (``search_spaces.arch``, read with ``profile_arch``). Rules are
registered by name (:func:`rule`) so that search-space files can list the ones that apply; a family's own rules
live in its folder (``kernels/<family>/rules.py``), these are the ones two families' spaces share. Variant
switches (CAUSAL_SPLIT, WARP_SPECIALIZE, HEADS_FIRST, REVERSE, PERSISTENT) count as False and LOADS as "pointer"
when a config leaves them out.

The resource rules (registers, shared memory) are fitted to what Triton 3.6 allocated on an H100 for
kernels/attention_fwd/kernel.py (216 configs: BLOCK_M 64-256, BLOCK_N 32-128, 4/8 warps, 2-4 stages, D 64/128,
pointer and device-side TMA loads); ``python3 benchmarks/probe_kernel.py --calibrate`` compiles that grid again
and prints the compiler's figures next to these estimates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flashcore.cache import ELEMENT_BYTES

from .arch import profile_arch

Rule = Callable[[Mapping[str, Any], Any, Any], "str | None"]
RULES: dict[str, Rule] = {}


# Registers: a thread has 255. Besides its share of the tiles, a thread holds the kernel's fixed state (row
# indices, m_i, l_i, loop state) and, with pointer loads, the K/V address tensors: about REGISTER_OVERHEAD.
REGISTER_LIMIT = 255  # sm_80 to sm_90 (search_spaces.arch: each record's registers_per_thread)
REGISTER_OVERHEAD = {"pointer": 70, "tma": 30}
SCORE_REGISTERS = 1.25  # per score element: the fp32 score plus its 16-bit copy P, partly sharing registers
TMA_BARRIER_BYTES = 1024  # TMA paths: mbarriers, which the allocator aligns up to 1 KiB


def loads(config) -> str:
    return config.get("LOADS", "pointer")


def rule(fn: Rule) -> Rule:
    """Register ``fn`` under its name."""
    RULES[fn.__name__] = fn
    return fn


def pow2_at_least(n: int, floor: int = 16) -> int:
    """The smallest power of two (``floor`` times one) at least ``n``: a padded tile dimension."""
    p = floor
    while p < n:
        p *= 2
    return p


def cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)


def registers_over_budget(need: float, profile) -> str | None:
    """The register rule every family's space applies to its own estimate ``need`` (32-bit registers per thread)
    against the architecture's limit: beyond it the tiles spill."""
    limit = profile_arch(profile).registers_per_thread
    if need > limit:
        return f"needs ~{need:.0f} registers per thread for its tiles (limit {limit}): it would spill"
    return None


def smem_over_budget(need: int, profile) -> str | None:
    """The shared-memory rule every family's space applies to its own estimate ``need`` (bytes per block)."""
    if need > profile.smem_bytes:
        return f"needs ~{need // 1024} KiB of shared memory (GPU has {profile.smem_bytes // 1024} KiB per block)"
    return None


@rule
def causal_split_needs_causal(config, point, profile):
    """CAUSAL_SPLIT changes nothing in a non-causal kernel: trying it would time the same code twice."""
    if config.get("CAUSAL_SPLIT") and not point.causal:
        return "CAUSAL_SPLIT only applies to causal attention"
    return None


MIN_GPU_TILE = 64  # one wgmma row block of a warpgroup; the smallest tile the GPU spaces search


@rule
def tile_within_sequence(config, point, profile):
    """A tile larger than the padded sequence only computes padding, except the smallest tile a GPU space has
    (MIN_GPU_TILE): a point shorter than it (S = 1) still has a config."""
    floor = 16 if profile.interpreter else MIN_GPU_TILE
    for name, length in (("BLOCK_M", point.seq_len), ("BLOCK_N", getattr(point, "kv_len", point.seq_len))):
        cap = max(pow2_at_least(length), floor)
        if config[name] > cap:
            return f"{name}={config[name]} exceeds the sequence (S={length}, padded {cap})"
    return None


@rule
def warps_fit_tile(config, point, profile):
    """Each warp needs at least 8 rows of the query tile (num_warps <= BLOCK_M / 8)."""
    if config["num_warps"] * 8 > config["BLOCK_M"]:
        return f"num_warps={config['num_warps']} is too many for BLOCK_M={config['BLOCK_M']}"
    return None


@rule
def warpgroups_own_rows(config, point, profile):
    """On Hopper a warpgroup (4 warps) runs wgmma on 64 query rows at a time: with more warpgroups than
    BLOCK_M / 64, Triton splits the score tile's columns between them and every row max and row sum then
    crosses warpgroups through shared memory (Triton's own attention tutorial prunes these on sm_90)."""
    if profile.interpreter:
        return None
    groups = cdiv(config["num_warps"], 4)
    if groups > 1 and config["BLOCK_M"] < 64 * groups:
        return f"num_warps={config['num_warps']} is {groups} warpgroups, more than BLOCK_M={config['BLOCK_M']} / 64"
    return None


def registers_per_thread(config, point) -> float:
    """Estimated 32-bit registers per thread: the fp32 accumulator (BLOCK_M x D) and the score tile with its
    16-bit copy (SCORE_REGISTERS x BLOCK_M x BLOCK_N) spread over the program's threads, plus the overhead.

    On the H100 calibration grid this estimate stays within 255 for every config that compiled without
    spilling, and exceeds it for every config that spilled more than 32 bytes (the few that spill 2 to 24
    bytes fall either side; device-side TMA with M128 N64 w4 at D=128, the fastest config probed at
    (4,16,8192,128), spills 10 and is accepted)."""
    d = pow2_at_least(point.head_dim)
    threads = 32 * config["num_warps"]
    tiles = config["BLOCK_M"] * (d + SCORE_REGISTERS * config["BLOCK_N"]) / threads
    return tiles + REGISTER_OVERHEAD["pointer" if loads(config) == "pointer" else "tma"]


@rule
def register_budget(config, point, profile):
    """The fp32 accumulator and score tiles must fit in a thread's 255 registers, or they spill."""
    return registers_over_budget(registers_per_thread(config, point), profile)


def is_fp8(point) -> bool:
    return str(point.dtype).startswith("fp8")  # "fp8" or "fp8-tol<budget>" (cache._types parses the budget)


def operand_bytes(config, point) -> tuple[int, int]:
    """Bytes per element of the (Q, K) and V tiles: the dtype's, or for FP8 1 byte where the recipe quantizes
    the operand (FP8_QK, FP8_PV; absent means true) and 2 where it keeps it in 16 bits."""
    if is_fp8(point):
        return (1 if config.get("FP8_QK", True) else 2), (1 if config.get("FP8_PV", True) else 2)
    elt = ELEMENT_BYTES.get(point.dtype, 2)
    return elt, elt


def shared_bytes(config, point) -> int:
    """Estimated shared memory per program: the Q tile and num_stages buffers of K and V tiles (exactly what
    the compiler allocated for pointer loads on the calibration grid), plus TMA_BARRIER_BYTES with TMA."""
    d = pow2_at_least(point.head_dim)
    qk, v = operand_bytes(config, point)
    stages = max(1, config["num_stages"])
    need = qk * (config["BLOCK_M"] * d + stages * config["BLOCK_N"] * d) + v * stages * config["BLOCK_N"] * d
    if loads(config) != "pointer":
        need += TMA_BARRIER_BYTES
    return need


@rule
def shared_memory_budget(config, point, profile):
    """The Q tile plus num_stages buffers of K and V tiles must fit in the GPU's shared memory per block."""
    if profile.interpreter:
        return None
    return smem_over_budget(shared_bytes(config, point), profile)
