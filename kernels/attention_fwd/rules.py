"""Named validity rules of the attention_fwd space (space.toml beside this file) that only it lists; the tile
rules it shares with the FP8 family are in ``search_spaces.rules``. Registered by name on import (the family's
declaration names this module; loading its space imports it)."""

from __future__ import annotations

from flashcore.search_spaces.arch import profile_arch
from flashcore.search_spaces.rules import cdiv, loads, operand_bytes, rule


@rule
def tma_needs_hopper(config, point, profile):
    """Tensor descriptors (the Tensor Memory Accelerator) exist from sm_90 on."""
    if loads(config) != "pointer" and not profile.interpreter and not profile_arch(profile).tma:
        return f"TMA loads need Hopper (sm 9.0+); this GPU is sm {profile.compute_capability}"
    return None


@rule
def warp_specialize_needs_hopper(config, point, profile):
    """Triton's warp specialization (setmaxnreg, async barriers) needs sm_90 or newer."""
    if config.get("WARP_SPECIALIZE") and not profile.interpreter and not profile_arch(profile).warp_specialize:
        return f"WARP_SPECIALIZE needs Hopper (sm 9.0+); this GPU is sm {profile.compute_capability}"
    return None


@rule
def host_tma_needs_mha(config, point, profile):
    """A host descriptor is bound to a tensor's own heads and cannot follow the key/value head a group of query
    heads shares (the launcher would load through device descriptors instead: timing that as host TMA would
    mislead)."""
    if loads(config) == "host_tma" and getattr(point, "kv_heads", point.heads) != point.heads:
        return "host TMA cannot follow grouped-query heads (device TMA can)"
    return None


@rule
def tma_needs_aligned_rows(config, point, profile):
    """A tensor descriptor needs 16-byte row strides: D x element size must be a multiple of 16 bytes (D % 8 == 0
    in fp16/bf16). Otherwise the launcher falls back to pointer loads, and timing that as TMA would mislead."""
    elt = min(operand_bytes(config, point))
    if loads(config) != "pointer" and point.head_dim * elt % 16:
        return f"TMA needs 16-byte rows; D={point.head_dim} rows are {point.head_dim * elt} bytes"
    return None


@rule
def heads_first_needs_query_blocks(config, point, profile):
    """HEADS_FIRST reorders the query blocks of each head; with a single block per head both orders launch
    the same programs in the same order."""
    if config.get("HEADS_FIRST") and cdiv(point.seq_len, config["BLOCK_M"]) < 2:
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
    if loads(config) != "pointer" and point.seq_len < TMA_MIN_SEQ_LEN and not profile.interpreter:
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
    tiles = cdiv(point.seq_len, config["BLOCK_M"]) * point.batch * point.heads
    if tiles <= profile.sm_count:
        return f"PERSISTENT needs more tiles than SMs; {tiles} tiles on {profile.sm_count} SMs"
    return None
