"""Named validity rules of the attention_kv search space (space.toml beside this file).

A rule is ``rule(config, point, profile) -> str | None`` (None: the config passes; else a one-line reason),
registered by name with ``search_spaces.rules.rule``; names start with ``kv_`` so that they never collide with
attention_fwd's. ``point`` has ``batch, heads`` (query heads), ``kv_heads, seq_len`` (L, query length),
``kv_len`` (S), ``head_dim, causal, lower_right, dtype``; a point without ``kv_heads`` / ``kv_len`` /
``lower_right`` (an attention_fwd point) reads as Hkv = Hq, S = L, top-left. ``profile`` has ``sm_count``,
``smem_bytes`` and ``interpreter``.

The split count is not a fixed heuristic: the rules bound it by the work (whole key blocks per split) and by
the machine (splits only when the unsplit grid is under SPLIT_BELOW_WAVES waves of SMs, and never more than
MAX_WAVES waves of programs), and the tuner times what remains.

The resource estimates follow the approach of search_spaces/rules.py (register_budget, shared_memory_budget) and
are fitted to this kernel compiled OFFLINE for sm_90a (Triton 3.6 -> PTX -> its bundled ptxas -v, with the
launch's divisibility specializations, no GPU): 248 configs, BLOCK_M / BLOCK_N 16-128, 2/4/8 warps, 1-4 stages,
D 64/128, packed and not (NOTES.md). On that grid the register estimate accepts no config that spills more
than 32 bytes and rejects 5 that do not; the shared-memory estimate is never below the compiler's figure.
"""

from __future__ import annotations

from flashcore.search_spaces.rules import cdiv, pow2_at_least, registers_over_budget, rule, smem_over_budget

REGISTER_OVERHEAD = 70     # fixed state and address tensors (attention_fwd's pointer-load figure; fits here too)
PACK_REGISTERS = 30        # packed rows: per-row head / position / limit vectors and gathered Q and O addresses
SCORE_REGISTERS = 1.25     # per score element: fp32 score and its 16-bit copy P, partly sharing registers
KV_TILE_REGISTERS = 0.125  # per K / V tile element (BLOCK_N x D): operands staged through registers (fitted)
MMA_TILE = 16 * 8          # score elements of one m16n8 MMA tile
MIN_BLOCKS_PER_SPLIT = 2
SPLIT_BELOW_WAVES = 2
MAX_WAVES = 4


def group(point) -> int:
    """Query heads per kv head (G)."""
    return max(1, point.heads // getattr(point, "kv_heads", point.heads))


def packed(config, point) -> bool:
    return bool(config.get("PACK_GQA", False)) and group(point) > 1


def tile_rows(config, point) -> int:
    """Rows of the problem along BLOCK_M: G·L query (position, head) pairs when packed, else L positions."""
    return point.seq_len * (group(point) if packed(config, point) else 1)


def unsplit_programs(config, point) -> int:
    """Programs of the launch with one split: B x (Hkv packed, Hq otherwise) x query tiles."""
    heads = getattr(point, "kv_heads", point.heads) if packed(config, point) else point.heads
    return point.batch * heads * cdiv(tile_rows(config, point), config["BLOCK_M"])


def visible_keys(point) -> int:
    """Keys the last query row sees, the most any tile splits: S, or min(S, L) for top-left causal."""
    s = getattr(point, "kv_len", point.seq_len)
    if point.causal and not getattr(point, "lower_right", False):
        return min(s, point.seq_len)
    return s


@rule
def kv_pack_needs_groups(config, point, profile):
    """With one query head per kv head (G = 1) packing is the plain kernel: trying both times it twice."""
    if config.get("PACK_GQA") and group(point) == 1:
        return "PACK_GQA needs grouped heads (Hq > Hkv)"
    return None


@rule
def kv_tile_within_rows(config, point, profile):
    """A query tile larger than the padded rows (G·L packed, L otherwise) only computes padding; in decode
    (L = 1..16) this is what makes packing the way to fill a tile."""
    rows = tile_rows(config, point)
    if config["BLOCK_M"] > pow2_at_least(rows):
        return f"BLOCK_M={config['BLOCK_M']} exceeds the tile's {rows} rows (padded {pow2_at_least(rows)})"
    return None


@rule
def kv_block_within_keys(config, point, profile):
    """A key block larger than the padded visible key range only loads and masks padding."""
    keys = visible_keys(point)
    if config["BLOCK_N"] > pow2_at_least(keys):
        return f"BLOCK_N={config['BLOCK_N']} exceeds the {keys} visible keys (padded {pow2_at_least(keys)})"
    return None


@rule
def kv_warps_fit_tile(config, point, profile):
    """The score tile is shared among warps in m16n8 MMA tiles (128 elements); warps beyond that count get
    no MMA work and the tile is replicated. Not under the interpreter, where warps mean nothing."""
    if profile.interpreter:
        return None
    tiles = config["BLOCK_M"] * config["BLOCK_N"] // MMA_TILE
    if config["num_warps"] > tiles:
        return f"num_warps={config['num_warps']} exceeds the {tiles} MMA tiles of {config['BLOCK_M']}x{config['BLOCK_N']}"
    return None


def registers_per_thread(config, point) -> float:
    """The fp32 accumulator (BLOCK_M x D), the score tile (SCORE_REGISTERS x BLOCK_M x BLOCK_N) and the K/V
    share (KV_TILE_REGISTERS x BLOCK_N x D) over the program's threads, plus the overheads."""
    d = pow2_at_least(point.head_dim)
    bm, bn = config["BLOCK_M"], config["BLOCK_N"]
    tiles = (bm * d + SCORE_REGISTERS * bm * bn + KV_TILE_REGISTERS * bn * d) / (32 * config["num_warps"])
    return tiles + REGISTER_OVERHEAD + (PACK_REGISTERS if packed(config, point) else 0)


@rule
def kv_register_budget(config, point, profile):
    """The fp32 accumulator and score tiles must fit in a thread's 255 registers, or they spill."""
    return registers_over_budget(registers_per_thread(config, point), profile)


def shared_bytes(config, point) -> int:
    """16-bit tiles in shared memory per program. BLOCK_M >= 64 (wgmma): the Q tile plus num_stages K and V
    buffers (as search_spaces.rules.shared_bytes; the compiler's exact figure for 2+ stages). BLOCK_M < 64
    (mma.sync; Q stays in registers): num_stages - 1 K and V buffers plus at most 4·BLOCK_M·max(D, BLOCK_N)
    bytes of layout-conversion scratch (the compiler's figure, or above it)."""
    d = pow2_at_least(point.head_dim)
    bm, bn, stages = config["BLOCK_M"], config["BLOCK_N"], max(1, config["num_stages"])
    if bm < 64:
        return 2 * 2 * max(1, stages - 1) * bn * d + 4 * bm * max(d, bn)
    return 2 * (bm * d + 2 * stages * bn * d)


@rule
def kv_shared_memory_budget(config, point, profile):
    """The Q tile plus num_stages buffers of K and V tiles must fit in the GPU's shared memory per block."""
    if profile.interpreter:
        return None
    return smem_over_budget(shared_bytes(config, point), profile)


@rule
def kv_stages_need_blocks(config, point, profile):
    """A pipeline of num_stages buffers prefetches num_stages - 1 blocks ahead: deeper than 2 only pays when
    a program's slice (visible blocks / NUM_SPLITS) has at least num_stages blocks to stream."""
    blocks = cdiv(visible_keys(point), config["BLOCK_N"]) // config.get("NUM_SPLITS", 1)
    if config["num_stages"] > 2 and blocks < config["num_stages"]:
        return f"num_stages={config['num_stages']} is deeper than the {blocks} key blocks of a split"
    return None


@rule
def kv_split_gets_blocks(config, point, profile):
    """Each split must get MIN_BLOCKS_PER_SPLIT whole key blocks of the visible range: thinner splits only add
    programs, partials and combine traffic (more splits than blocks are even empty; the kernel stays correct)."""
    splits = config.get("NUM_SPLITS", 1)
    blocks = cdiv(visible_keys(point), config["BLOCK_N"])
    if splits > 1 and splits * MIN_BLOCKS_PER_SPLIT > blocks:
        return f"NUM_SPLITS={splits} leaves under {MIN_BLOCKS_PER_SPLIT} of the {blocks} key blocks per split"
    return None


@rule
def kv_split_only_below_waves(config, point, profile):
    """Splitting pays for the workspace round trip and the combine launch only when the unsplit grid cannot
    fill the GPU: fewer than SPLIT_BELOW_WAVES x sm_count programs. Not under the interpreter."""
    if profile.interpreter or config.get("NUM_SPLITS", 1) == 1:
        return None
    programs = unsplit_programs(config, point)
    if programs >= SPLIT_BELOW_WAVES * profile.sm_count:
        return f"{programs} programs already fill {SPLIT_BELOW_WAVES} waves of {profile.sm_count} SMs without splits"
    return None


@rule
def kv_split_within_waves(config, point, profile):
    """Tiles x splits stay within MAX_WAVES waves of SMs: beyond, more splits only shorten each program's
    loop below its fixed cost and grow the workspace. Not under the interpreter."""
    splits = config.get("NUM_SPLITS", 1)
    if profile.interpreter or splits == 1:
        return None
    programs = unsplit_programs(config, point) * splits
    if programs > MAX_WAVES * profile.sm_count:
        return f"{programs} programs exceed {MAX_WAVES} waves of {profile.sm_count} SMs"
    return None
