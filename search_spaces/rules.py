"""Named validity rules: each says why a config cannot work (or cannot help) at a point, before compiling.

A rule is ``rule(config, point, profile) -> str | None``: None when the config passes, else a one-line reason.
``point`` has ``batch, heads, seq_len, head_dim, causal, dtype``; ``profile`` has ``smem_bytes``, ``sm_count``
and ``interpreter``. Rules are registered by name so that search-space files can list the ones that apply.
Variant switches (CAUSAL_SPLIT, WARP_SPECIALIZE, HEADS_FIRST, REVERSE, PERSISTENT) count as False and LOADS as
"pointer" when a config leaves them out.

The resource rules (registers, shared memory) are fitted to what Triton 3.6 allocated on an H100 for
kernels/attention_fwd/kernel.py (216 configs: BLOCK_M 64-256, BLOCK_N 32-128, 4/8 warps, 2-4 stages, D 64/128,
pointer and device-side TMA loads); ``python3 benchmarks/probe_kernel.py --calibrate`` compiles that grid again
and prints the compiler's figures next to these estimates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Rule = Callable[[Mapping[str, Any], Any, Any], "str | None"]
RULES: dict[str, Rule] = {}

_ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "fp8": 1}

# Registers: a thread has 255. Besides its share of the tiles, a thread holds the kernel's fixed state (row
# indices, m_i, l_i, loop state) and, with pointer loads, the K/V address tensors: about REGISTER_OVERHEAD.
REGISTER_LIMIT = 255
REGISTER_OVERHEAD = {"pointer": 70, "tma": 30}
SCORE_REGISTERS = 1.25  # per score element: the fp32 score plus its 16-bit copy P, partly sharing registers
TMA_BARRIER_BYTES = 1024  # TMA paths: mbarriers, which the allocator aligns up to 1 KiB


def _loads(config) -> str:
    return config.get("LOADS", "pointer")


def rule(fn: Rule) -> Rule:
    """Register ``fn`` under its name."""
    RULES[fn.__name__] = fn
    return fn


def _pow2_at_least(n: int, floor: int = 16) -> int:
    p = floor
    while p < n:
        p *= 2
    return p


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


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
        cap = max(_pow2_at_least(length), floor)
        if config[name] > cap:
            return f"{name}={config[name]} exceeds the sequence (S={length}, padded {cap})"
    return None


def _hopper(profile) -> bool:
    cc = str(getattr(profile, "compute_capability", "9.0"))
    return cc[:1].isdigit() and int(cc.split(".")[0]) >= 9


@rule
def tma_needs_hopper(config, point, profile):
    """Tensor descriptors (the Tensor Memory Accelerator) exist from sm_90 on."""
    if _loads(config) != "pointer" and not profile.interpreter and not _hopper(profile):
        return f"TMA loads need Hopper (sm 9.0+); this GPU is sm {profile.compute_capability}"
    return None


@rule
def warp_specialize_needs_hopper(config, point, profile):
    """Triton's warp specialization (setmaxnreg, async barriers) needs sm_90 or newer."""
    if config.get("WARP_SPECIALIZE") and not profile.interpreter and not _hopper(profile):
        return f"WARP_SPECIALIZE needs Hopper (sm 9.0+); this GPU is sm {profile.compute_capability}"
    return None


@rule
def host_tma_needs_mha(config, point, profile):
    """A host descriptor is bound to a tensor's own heads and cannot follow the key/value head a group of query
    heads shares (the launcher would load through device descriptors instead: timing that as host TMA would
    mislead)."""
    if _loads(config) == "host_tma" and getattr(point, "kv_heads", point.heads) != point.heads:
        return "host TMA cannot follow grouped-query heads (device TMA can)"
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
    groups = _cdiv(config["num_warps"], 4)
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
    d = _pow2_at_least(point.head_dim)
    threads = 32 * config["num_warps"]
    tiles = config["BLOCK_M"] * (d + SCORE_REGISTERS * config["BLOCK_N"]) / threads
    return tiles + REGISTER_OVERHEAD["pointer" if _loads(config) == "pointer" else "tma"]


@rule
def register_budget(config, point, profile):
    """The fp32 accumulator and score tiles must fit in a thread's 255 registers, or they spill."""
    need = registers_per_thread(config, point)
    if need > REGISTER_LIMIT:
        return f"needs ~{need:.0f} registers per thread for its tiles (limit {REGISTER_LIMIT}): it would spill"
    return None


def _is_fp8(point) -> bool:
    return str(point.dtype).startswith("fp8")  # "fp8" or "fp8-tol<budget>" (cache._types parses the budget)


def _operand_bytes(config, point) -> tuple[int, int]:
    """Bytes per element of the (Q, K) and V tiles: the dtype's, or for FP8 1 byte where the recipe quantizes
    the operand (FP8_QK, FP8_PV; absent means true) and 2 where it keeps it in 16 bits."""
    if _is_fp8(point):
        return (1 if config.get("FP8_QK", True) else 2), (1 if config.get("FP8_PV", True) else 2)
    elt = _ELEMENT_BYTES.get(point.dtype, 2)
    return elt, elt


def shared_bytes(config, point) -> int:
    """Estimated shared memory per program: the Q tile and num_stages buffers of K and V tiles (exactly what
    the compiler allocated for pointer loads on the calibration grid), plus TMA_BARRIER_BYTES with TMA."""
    d = _pow2_at_least(point.head_dim)
    qk, v = _operand_bytes(config, point)
    stages = max(1, config["num_stages"])
    need = qk * (config["BLOCK_M"] * d + stages * config["BLOCK_N"] * d) + v * stages * config["BLOCK_N"] * d
    if _loads(config) != "pointer":
        need += TMA_BARRIER_BYTES
    return need


@rule
def shared_memory_budget(config, point, profile):
    """The Q tile plus num_stages buffers of K and V tiles must fit in the GPU's shared memory per block."""
    if profile.interpreter:
        return None
    need = shared_bytes(config, point)
    if need > profile.smem_bytes:
        return f"needs ~{need // 1024} KiB of shared memory (GPU has {profile.smem_bytes // 1024} KiB per block)"
    return None


@rule
def tma_needs_aligned_rows(config, point, profile):
    """A tensor descriptor needs 16-byte row strides: D x element size must be a multiple of 16 bytes (D % 8 == 0
    in fp16/bf16). Otherwise the launcher falls back to pointer loads, and timing that as TMA would mislead."""
    elt = min(_operand_bytes(config, point))
    if _loads(config) != "pointer" and point.head_dim * elt % 16:
        return f"TMA needs 16-byte rows; D={point.head_dim} rows are {point.head_dim * elt} bytes"
    return None


@rule
def heads_first_needs_query_blocks(config, point, profile):
    """HEADS_FIRST reorders the query blocks of each head; with a single block per head both orders launch
    the same programs in the same order."""
    if config.get("HEADS_FIRST") and _cdiv(point.seq_len, config["BLOCK_M"]) < 2:
        return f"HEADS_FIRST needs 2+ query blocks per head; S={point.seq_len} fits one BLOCK_M={config['BLOCK_M']}"
    return None


@rule
def reverse_needs_causal(config, point, profile):
    """REVERSE starts the longest causal rows first; without the causal mask every tile is the same work and
    the reversed order only mirrors the plain one."""
    if config.get("REVERSE") and not point.causal:
        return "REVERSE only applies to causal attention"
    return None


TMA_MIN_SEQ_LEN = 1024


@rule
def tma_needs_long_sequences(config, point, profile):
    """Tensor descriptors pay a setup per program (device_tma) or per launch (host_tma) that only long key
    loops repay: on the H100 both lost to pointer loads at S=128 and S=512 with every config probed, and won
    at S=8192. Below TMA_MIN_SEQ_LEN tokens they are not tried."""
    if _loads(config) != "pointer" and point.seq_len < TMA_MIN_SEQ_LEN and not profile.interpreter:
        return f"TMA loads do not pay below S={TMA_MIN_SEQ_LEN} (S={point.seq_len})"
    return None


@rule
def warp_specialize_needs_8_warps(config, point, profile):
    """Triton 3.6's warp specialization on Hopper failed to compile every 4-warp config probed on the H100
    (an assertion in its WSLowerToken pass) and compiled every 8-warp one."""
    if profile.interpreter:
        return None
    if config.get("WARP_SPECIALIZE") and config["num_warps"] != 8:
        return f"WARP_SPECIALIZE needs num_warps=8 on Hopper (Triton 3.6); got {config['num_warps']}"
    return None


@rule
def persistent_needs_waves(config, point, profile):
    """A persistent launch only differs from a plain one when there are more tiles than SMs."""
    if not config.get("PERSISTENT"):
        return None
    tiles = _cdiv(point.seq_len, config["BLOCK_M"]) * point.batch * point.heads
    if tiles <= profile.sm_count:
        return f"PERSISTENT needs more tiles than SMs; {tiles} tiles on {profile.sm_count} SMs"
    return None


# --- FP8 recipes (kernels/attention_fp8/quant.py; the config keys FP8_QK, FP8_PV, Q_SCALE, K_SCALE, V_SCALE,
# SMOOTH_K, P_SCALE)

# Relative L2 error of FP8 attention with both matmuls in E4M3 on the sweep's inputs (autotune/tuning/inputs.py), in the
# PyTorch emulation: at least 3.6% (mostly 4% to 7%) for every Q/K scaling and smoothing of the space, at S 17
# to 8192 and D 16 to 128 (S = 1 aside, where the logits do not matter); tests/test_fp8_sweep.py checks the
# floor. A budget below it can only be met with Q and K in 16 bits (2.3% to 3.1% there).
QK_FP8_ERROR_FLOOR = 0.035


@rule
def fp8_recipe_canonical(config, point, profile):
    """Recipe fields that the recipe ignores (Q/K scales and SMOOTH_K without FP8_QK, V scale and P_SCALE
    without FP8_PV) stay at their defaults: other values launch the same kernel on the same inputs."""
    from flashcore.kernels.attention_fp8.quant import Recipe

    try:
        recipe = Recipe.from_config(config)
    except ValueError as exc:
        return str(exc)
    if recipe.canonical() != recipe:
        return f"recipe fields ignored by {recipe.label} must keep their defaults (the same kernel is tried once)"
    return None


@rule
def fp8_recipe_within_budget(config, point, profile):
    """E4M3 Q·Kᵀ and P·V together cannot meet an error budget below QK_FP8_ERROR_FLOOR (the budget is in the
    point's dtype, "fp8-tol<budget>"): such recipes would only fail the gate."""
    if not _is_fp8(point) or not config.get("FP8_QK", True) or not config.get("FP8_PV", True):
        return None
    from flashcore.cache import fp8_tol

    tol = fp8_tol(point.dtype)
    if tol is not None and tol < QK_FP8_ERROR_FLOOR:
        return (f"E4M3 Q·Kᵀ and P·V cost at least {QK_FP8_ERROR_FLOOR:g} relative L2 error, over the budget "
                f"{tol:g}")
    return None


@rule
def fp8_pv16_needs_qk16(config, point, profile):
    """A 16-bit P·V only pays when Q·Kᵀ is 16-bit too: behind an E4M3 Q·Kᵀ most of the error is Q's and K's (on
    the sweep's inputs at S 1024, D 64: 6.8% with a 16-bit P·V against 7.3% with both in E4M3), and the 16-bit
    P·V costs time."""
    if _is_fp8(point) and config.get("FP8_QK", True) and config.get("FP8_PV", True) is False:
        return "FP8_PV=false needs FP8_QK=false (behind an E4M3 Q·Kᵀ it costs time and saves no error)"
    return None
