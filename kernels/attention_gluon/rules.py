"""Named validity rules of the Gluon family's search space (space.toml beside this file): each says why a config
cannot compile or fit, or cannot help, at a point. The config schema and the resource model they use live with
the kernel (config.py beside this file), so that the launcher accepts exactly what they do.
"""

from __future__ import annotations

from flashcore.cache import HALF_DTYPES
from flashcore.search_spaces.arch import profile_arch
from flashcore.search_spaces.rules import rule, smem_over_budget

from .config import (CONFIG_DEFAULTS, HEAD_DIMS, SETMAXNREG_MAX, SETMAXNREG_MIN, config_error, consumer_registers,
                     ctas_per_sm, element_bytes, normalized, register_split, shared_bytes)


@rule
def gluon_needs_sm90(config, point, profile):
    """The kernel is Gluon for sm_90 (wgmma, TMA, setmaxnreg): it does not run in Triton's interpreter nor on
    another architecture."""
    if getattr(profile, "interpreter", False):
        return "Gluon kernels do not run in Triton's interpreter"
    arch = profile_arch(profile)
    if not (arch.wgmma and arch.tma and arch.warp_specialize):
        return f"the Gluon kernel is written for sm_90 (Hopper: wgmma, TMA, setmaxnreg); this GPU is {arch.name}"
    return None


@rule
def gluon_config_valid(config, point, profile):
    """Keys and values the launcher accepts (unknown keys, non-powers of two, PINGPONG without two consumers)."""
    return config_error(config)


@rule
def gluon_supported_point(config, point, profile):
    """16-bit dtypes, head dim 64/128/256 (power-of-two TMA boxes and wgmma shapes), Hq a multiple of Hkv."""
    if str(point.dtype) not in HALF_DTYPES:
        return f"the Gluon kernel takes float16 or bfloat16; got {point.dtype}"
    if point.head_dim not in HEAD_DIMS:
        return f"head dim must be one of {list(HEAD_DIMS)}; got {point.head_dim}"
    kv_heads = getattr(point, "kv_heads", None) or point.heads
    if point.heads % kv_heads:
        return f"query heads {point.heads} are not a multiple of kv heads {kv_heads}"
    return None


@rule
def gluon_register_split(config, point, profile):
    """setmaxnreg takes multiples of 8 in 24..256, and the default partition's share (what the worker consumer
    and the producer leave of the budget) must be one: CONSUMER_REGS means nothing with one consumer (only its
    default value is tried then)."""
    if config_error(config):
        return None  # gluon_config_valid reports it
    c = normalized(config)
    if c["CONSUMERS"] == 1 and c["CONSUMER_REGS"] != CONFIG_DEFAULTS["CONSUMER_REGS"]:
        return "CONSUMER_REGS only applies with CONSUMERS=2"
    split = register_split(c)
    if not SETMAXNREG_MIN <= split["default"] <= SETMAXNREG_MAX:
        return f"the default consumer would get {split['default']} registers (setmaxnreg takes 24..256)"
    return None


@rule
def gluon_register_budget(config, point, profile):
    """The O accumulator and score tiles of a consumer must fit in its setmaxnreg share, or ptxas spills."""
    if config_error(config) or point.head_dim not in HEAD_DIMS:
        return None
    split = register_split(config)
    have = min(r for r in (split["default"], split["worker"]) if r) if normalized(config)["CONSUMERS"] == 2 \
        else split["default"]
    need = consumer_registers(config, point.head_dim)
    if need > have:
        return f"a consumer needs ~{need:.0f} registers per thread, has {have}: it would spill"
    return None


@rule
def gluon_shared_memory_budget(config, point, profile):
    """Q tiles plus STAGES K and V tiles must fit in the shared memory a block may opt into."""
    if config_error(config) or point.head_dim not in HEAD_DIMS:
        return None
    return smem_over_budget(shared_bytes(config, point.head_dim, element_bytes(point)), profile)


@rule
def gluon_tile_within_sequence(config, point, profile):
    """A CTA tile or key block more than twice the padded sequence only computes padding (the smallest tiles
    always pass: BLOCK_M=64, BLOCK_N<=64, one consumer)."""
    if config_error(config):
        return None
    c = normalized(config)
    cap = 64
    while cap < point.seq_len:
        cap *= 2
    if c["BLOCK_M"] * c["CONSUMERS"] > 2 * cap and not (c["BLOCK_M"] == 64 and c["CONSUMERS"] == 1):
        return f"a {c['BLOCK_M'] * c['CONSUMERS']}-row tile is mostly padding at S={point.seq_len}"
    if c["BLOCK_N"] > cap:
        return f"BLOCK_N={c['BLOCK_N']} exceeds the padded sequence ({cap})"
    return None


@rule
def gluon_persistent_needs_waves(config, point, profile):
    """A persistent grid only differs from the plain one when there are more tiles than CTAs resident at once."""
    if config_error(config) or not normalized(config)["PERSISTENT"] or point.head_dim not in HEAD_DIMS:
        return None
    c = normalized(config)
    tile_m = c["BLOCK_M"] * c["CONSUMERS"]
    tiles = -(-point.seq_len // tile_m) * point.batch * point.heads
    resident = profile.sm_count * ctas_per_sm(c, point.head_dim, element_bytes(point))
    if tiles <= resident:
        return f"PERSISTENT needs more tiles than resident CTAs; {tiles} tiles, {resident} CTAs"
    return None
