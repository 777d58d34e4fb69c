"""Config schema of the Gluon family and the resource model its rules use (pure Python: no torch, no Triton).

The launcher (launch.py), the CPU compiler (compile.py) and the named rules (kernels/attention_gluon/rules.py) take
the config schema from here, so that what the rules accept is exactly what the launcher accepts. Missing
optional keys count as their CONFIG_DEFAULTS value.

The resource estimates are fitted to what Triton 3.6 compiled for sm_90 on a CPU (compile.py): the shared
memory formula is exact up to the barrier bytes; the register estimate keeps every config that compiled
without spills and rejects the ones that spilled (tests/test_gluon_compile.py checks both directions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flashcore.search_spaces.arch import ARCHS

SM90 = ARCHS["9.0"]  # the architecture this kernel is written for (search_spaces.arch)


REQUIRED_KEYS = ("BLOCK_M", "BLOCK_N")
CONFIG_DEFAULTS: dict[str, Any] = {
    "STAGES": 2,            # K/V ring depth (2..4)
    "CONSUMERS": 2,         # consumer warpgroups (1 or 2), each BLOCK_M query rows
    "PINGPONG": False,      # consumers take turns on the tensor cores (needs CONSUMERS=2)
    "OVERLAP": False,       # issue Q K_{j+1}ᵀ before softmax(j+1), overlapping P_j V_j
    "PERSISTENT": False,    # grid = SMs x CTAs per SM, each looping over tiles
    "PRODUCER_REGS": 24,    # setmaxnreg of the 1-warp TMA producer
    "CONSUMER_REGS": 240,   # setmaxnreg of the worker consumer (CONSUMERS=2); the default partition gets the rest
    "num_warps": 4,         # warps per consumer partition: always 4 (one warpgroup)
}
CONFIG_KEYS = (*REQUIRED_KEYS, *CONFIG_DEFAULTS)
BOOL_KEYS = ("PINGPONG", "OVERLAP", "PERSISTENT")
BLOCK_M_VALUES = (64, 128)
BLOCK_N_VALUES = (16, 32, 64, 128, 256)
HEAD_DIMS = (64, 128, 256)
STAGE_VALUES = (2, 3, 4)

# Registers. The kernel runs 4 + 4 + 1 warps (+3 padding) = 3 warpgroups with CONSUMERS=2, or 2 warpgroups with
# CONSUMERS=1. Triton 3.6 sets .maxnreg to MAXNREG (what the launch reserves per thread), gives each worker
# warpgroup its requested count with setmaxnreg, and the default partition the rest of the warpgroups' budget.
MAXNREG = {2: 168, 1: 128}   # 168 x 384 threads fills the register file; 128 x 256 allows 2 CTAs per SM
SETMAXNREG_MIN, SETMAXNREG_MAX = 24, 256
REGISTER_OVERHEAD = 32       # per consumer thread besides its tiles (indices, m_i, l_i, ring state)
SCORE_WEIGHT = 1.5           # registers per score element per thread (fitted: see consumer_registers)
SMEM_OVERHEAD = 1024         # mbarriers and the warp-specialization state, rounded up
SMEM_PER_SM = SM90.smem_per_sm  # 228 KiB per SM, 1 KiB of it reserved per CTA (the kernel is sm_90 only)
REGS_PER_SM = SM90.registers_per_sm


def normalized(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the defaults filled in (unknown keys are kept: check_config reports them)."""
    return {**CONFIG_DEFAULTS, **config}


def config_error(config: Mapping[str, Any]) -> str | None:
    """What is wrong with the config itself (unknown keys, bad values), as one line; None when it is valid."""
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        return f"unknown config keys {unknown}; known: {sorted(CONFIG_KEYS)}"
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        return f"config needs {missing}"
    c = normalized(config)
    choices = {"BLOCK_M": BLOCK_M_VALUES, "BLOCK_N": BLOCK_N_VALUES, "STAGES": STAGE_VALUES,
               "CONSUMERS": (1, 2), "num_warps": (4,)}
    for key, allowed in choices.items():
        if isinstance(c[key], bool) or c[key] not in allowed:
            return f"{key} must be one of {list(allowed)}; got {c[key]!r}"
    for key in BOOL_KEYS:
        if not isinstance(c[key], bool):
            return f"{key} must be true or false; got {c[key]!r}"
    for key in ("PRODUCER_REGS", "CONSUMER_REGS"):
        value = c[key]
        if isinstance(value, bool) or not isinstance(value, int) or value % 8 or not 24 <= value <= 256:
            return f"{key} must be a multiple of 8 in 24..256; got {value!r}"
    if c["PINGPONG"] and c["CONSUMERS"] != 2:
        return "PINGPONG needs CONSUMERS=2"
    return None


def register_split(config: Mapping[str, Any]) -> dict[str, int]:
    """Registers per thread: {"maxnreg", "default", "worker", "producer"} as Triton 3.6 assigns them (the
    default partition is consumer 0, the worker is consumer 1 when CONSUMERS=2)."""
    c = normalized(config)
    consumers = c["CONSUMERS"]
    maxnreg = MAXNREG[consumers]
    groups = consumers + 1  # warpgroups: consumers, then the producer's (1 warp + 3 padding warps)
    worker = c["CONSUMER_REGS"] if consumers == 2 else 0
    default = (groups * maxnreg - worker - c["PRODUCER_REGS"]) // 8 * 8
    return {"maxnreg": maxnreg, "default": default, "worker": worker, "producer": c["PRODUCER_REGS"]}


def consumer_registers(config: Mapping[str, Any], head_dim: int) -> float:
    """Estimated registers a consumer thread needs: the fp32 O accumulator (BLOCK_M x D over 128 threads), the
    score tile at SCORE_WEIGHT (the fp32 scores, their exponentials and the mask in flight), P as packed 16-bit
    values held across the next Q Kᵀ with OVERLAP, and REGISTER_OVERHEAD."""
    c = normalized(config)
    threads = 128
    acc = c["BLOCK_M"] * head_dim / threads
    scores = c["BLOCK_M"] * c["BLOCK_N"] / threads
    p = scores / 2 if c["OVERLAP"] else 0
    return acc + SCORE_WEIGHT * scores + p + REGISTER_OVERHEAD


def shared_bytes(config: Mapping[str, Any], head_dim: int, element_bytes: int = 2) -> int:
    """Estimated shared memory per CTA: one Q tile per consumer (reused for O) and STAGES K and V tiles."""
    c = normalized(config)
    tiles = c["CONSUMERS"] * c["BLOCK_M"] * head_dim + 2 * c["STAGES"] * c["BLOCK_N"] * head_dim
    return element_bytes * tiles + SMEM_OVERHEAD


def ctas_per_sm(config: Mapping[str, Any], head_dim: int, element_bytes: int = 2) -> int:
    """CTAs that fit on one SM at once (registers, shared memory): the persistent grid is SMs x this."""
    c = normalized(config)
    threads = 128 * (c["CONSUMERS"] + 1)
    by_regs = REGS_PER_SM // (register_split(c)["maxnreg"] * threads)
    by_smem = SMEM_PER_SM // (shared_bytes(c, head_dim, element_bytes) + 1024)
    return max(1, min(by_regs, by_smem))


def element_bytes(point) -> int:
    return 1 if str(point.dtype).startswith("fp8") else 2
