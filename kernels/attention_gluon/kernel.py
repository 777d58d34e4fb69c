"""Warp-specialized attention forward for Hopper (sm_90) in Gluon (Triton 3.6). Gluon code only.

One program (CTA) owns a tile of CONSUMERS x BLOCK_M query rows of one (batch, query head) and streams that
head's keys and values (its kv head under grouped-query attention) in blocks of BLOCK_N. Partitions:

- consumer 0: the default partition (4 warps = one warpgroup), query rows [m0, m0 + BLOCK_M);
- consumer 1 (CONSUMERS == 2): a 4-warp worker, rows [m0 + BLOCK_M, m0 + 2 * BLOCK_M);
- producer: a 1-warp worker that only issues TMA loads of K and V into a ring of STAGES shared buffers, with
  its registers cut to PRODUCER_REGS (``setmaxnreg``); the consumer worker asks for CONSUMER_REGS and the
  default partition gets what is left (rules.register_split has the budget).

Each consumer loads its own Q tile with TMA, runs S = Q Kᵀ and O += P V with ``warpgroup_mma`` (P stays in
registers as the A operand), an fp32 online softmax with exp2 and the scale folded in, and stores O through its
Q buffer with TMA (out-of-bounds rows are clipped by the descriptor, so rows past S are never written).

Barrier protocol (all mbarriers; phase = parity bit; a fresh barrier counts as having completed phase "1", so a
first wait on parity 1 passes at once):
- k_ready[s], v_ready[s] (count 1): the producer arrives with ``expect`` (tx bytes of one tile); TMA completes.
  Consumers wait on parity ``ring_phase``.
- k_empty[s], v_empty[s] (count CONSUMERS): each consumer arrives once per use, only after the
  ``warpgroup_mma_wait`` that retires the wgmma reading that buffer. The producer waits parity
  ``ring_phase ^ 1`` before refilling (so its first pass over the ring does not wait).
- q_bar[c] (count 1): consumer c's own Q load (expect + TMA + wait), phase flips once per tile.
- turn[c] (count 1, PINGPONG only): consumer c waits on turn[c] before issuing its tensor-core work and arrives
  on turn[1 - c] right after issuing it. Consumer 0 starts on parity 1 (passes), consumer 1 on parity 0
  (waits for consumer 0's first arrive). Both consumers take exactly n_blocks + 1 turns per tile (same tiles,
  same n_blocks), so the turns alternate strictly and a parity bit never falls two phases behind.
All three partitions walk the same tile sequence and compute the same n_blocks per tile, so every ring slot
filled is consumed by both consumers and the ring counters (index, phase) stay in step across tiles.

tests/test_gluon_compile.py replays this protocol in a model under random schedules (deadlock, phase aliasing,
buffer hazards); keep the two in step when changing either.

Compile-time variants: OVERLAP (Q K_{j+1}ᵀ and P_j V_j are issued together and the softmax of block j+1 runs
while P_j V_j is on the tensor cores: FA3's intra-warpgroup overlap), PINGPONG (consumers take turns on the
tensor cores), PERSISTENT (grid-stride loop over tiles), CAUSAL. Causal masking is applied only to blocks that
touch the diagonal or the sequence end.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)


# Reductions and cdiv are our own gluon.jit functions, not gl.max / gl.sum / gl.cdiv: those wrap triton.language
# functions that call other triton.jit functions, which become interpreter objects when TRITON_INTERPRET=1 is set
# (as tests do on a CPU) and then fail to compile even for a GPU target.
@gluon.jit
def _max(a, b):
    return gl.maximum(a, b)


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _cdiv(a, b):
    return (a + b - 1) // b


@gluon.jit
def _tile(tile, num_m, heads, kv_group, seq_len, TILE_M: gl.constexpr, BLOCK_N: gl.constexpr,
          CAUSAL: gl.constexpr):
    """(batch, query head, kv head, first row, number of key blocks) of a tile. Tiles of one head are
    consecutive; causal tiles of a head run from the last (longest) query block to the first."""
    bh = tile // num_m
    mi = tile % num_m
    if CAUSAL:
        mi = num_m - 1 - mi
    b = bh // heads
    h = bh % heads
    m0 = mi * TILE_M
    hi = seq_len
    if CAUSAL:
        hi = gl.minimum(seq_len, m0 + TILE_M)
    n_blocks = _cdiv(hi, BLOCK_N)
    return b, h, h // kv_group, m0, n_blocks


@gluon.jit
def _ring_next(index, phase, STAGES: gl.constexpr):
    index = index + 1
    wrap = index == STAGES
    return gl.where(wrap, 0, index), gl.where(wrap, phase ^ 1, phase)


@gluon.jit
def _producer(q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty,
              turns, qk_scale, seq_len, heads, kv_group, num_m, num_tiles,
              TILE_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
              PERSISTENT: gl.constexpr):
    """1 warp: TMA loads of K then V for every key block of every tile, into the ring."""
    start = gl.program_id(0)
    step = gl.num_programs(0) if PERSISTENT else num_tiles
    index = 0
    phase = 0
    for tile in range(start, num_tiles, step):
        b, h, hkv, m0, n_blocks = _tile(tile, num_m, heads, kv_group, seq_len, TILE_M, BLOCK_N, CAUSAL)
        for j in range(n_blocks):
            mbarrier.wait(k_empty.index(index), phase ^ 1)
            mbarrier.expect(k_ready.index(index), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [b, hkv, j * BLOCK_N, 0], k_ready.index(index),
                                            k_smem.index(index))
            mbarrier.wait(v_empty.index(index), phase ^ 1)
            mbarrier.expect(v_ready.index(index), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [b, hkv, j * BLOCK_N, 0], v_ready.index(index),
                                            v_smem.index(index))
            index, phase = _ring_next(index, phase, STAGES)


@gluon.jit
def _softmax(s, m_i, l_i, j, n_unmasked, m_row, seq_len, qk_scale, s_layout: gl.constexpr,
             BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """Mask block j of the scores if it touches the diagonal or S, then one online-softmax step.
    Returns (p in fp32, alpha, m_new, l_new); the caller rescales O by alpha."""
    if j >= n_unmasked:
        # One threshold per row (the last key column it may see, relative to this block), one compare per
        # score: fewer live registers than comparing two index tensors.
        last = seq_len - 1 - j * BLOCK_N
        limit = gl.full([BLOCK_M], last, gl.int32, layout=gl.SliceLayout(1, s_layout))
        if CAUSAL:
            rows = m_row + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
            limit = gl.minimum(limit, rows - j * BLOCK_N)
        cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        s = gl.where(gl.expand_dims(cols, 0) <= gl.expand_dims(limit, 1), s, float("-inf"))
    m_new = gl.maximum(m_i, gl.reduce(s, 1, _max) * qk_scale)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    l_new = l_i * alpha + gl.reduce(p, 1, _add)
    return p, alpha, m_new, l_new


@gluon.jit
def _rescale(acc, alpha, o_layout: gl.constexpr):
    alpha = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))
    return acc * gl.expand_dims(alpha, 1)


@gluon.jit
def _turn_wait(turns, turn_phase, CID: gl.constexpr, PINGPONG: gl.constexpr):
    if PINGPONG:
        mbarrier.wait(turns.index(CID), turn_phase)
        turn_phase = turn_phase ^ 1
    return turn_phase


@gluon.jit
def _turn_pass(turns, CID: gl.constexpr, PINGPONG: gl.constexpr):
    if PINGPONG:
        mbarrier.arrive(turns.index(1 - CID), count=1)


@gluon.jit
def _consumer(q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty,
              turns, qk_scale, seq_len, heads, kv_group, num_m, num_tiles,
              CID: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
              STAGES: gl.constexpr, CONSUMERS: gl.constexpr, CAUSAL: gl.constexpr, PERSISTENT: gl.constexpr,
              PINGPONG: gl.constexpr, OVERLAP: gl.constexpr):
    """One warpgroup: rows [m0 + CID * BLOCK_M, + BLOCK_M) of every tile this program owns."""
    dtype: gl.constexpr = q_desc.dtype
    TILE_M: gl.constexpr = CONSUMERS * BLOCK_M
    # wgmma instruction N: the whole tile, except that ptxas checks one instruction's registers against the
    # kernel's .maxnreg (128 with one consumer), which an N=256 accumulator (128 registers) exceeds.
    MAX_N: gl.constexpr = 256 if CONSUMERS == 2 else 128
    S_N: gl.constexpr = BLOCK_N if BLOCK_N <= MAX_N else MAX_N
    O_N: gl.constexpr = HEAD_DIM if HEAD_DIM <= MAX_N else MAX_N
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, S_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, O_N, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)

    q_buf = q_smem.index(CID)                      # [1, 1, BLOCK_M, HEAD_DIM]: the TMA box
    q_tile = q_buf.reshape([BLOCK_M, HEAD_DIM])    # the same bytes as the wgmma A operand
    q_bar = q_bars.index(CID)
    start = gl.program_id(0)
    step = gl.num_programs(0) if PERSISTENT else num_tiles
    index = 0
    phase = 0
    q_phase = 0
    turn_phase = 1 if CID == 0 else 0
    for tile in range(start, num_tiles, step):
        b, h, hkv, m0, n_blocks = _tile(tile, num_m, heads, kv_group, seq_len, TILE_M, BLOCK_N, CAUSAL)
        m_row = m0 + CID * BLOCK_M
        # Key blocks [0, n_unmasked) lie below this warpgroup's diagonal and inside S: no mask needed.
        n_unmasked = seq_len // BLOCK_N
        if CAUSAL:
            n_unmasked = gl.minimum(n_unmasked, (m_row + 1) // BLOCK_N)

        tma.store_wait(0)  # the previous tile's O store has read q_buf
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [b, h, m_row, 0], q_bar, q_buf)
        mbarrier.wait(q_bar, q_phase)
        q_phase = q_phase ^ 1

        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([BLOCK_M], gl.float32, layout=gl.SliceLayout(1, s_layout))
        acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, layout=o_layout)
        s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)

        if OVERLAP:
            # Prologue: S_0 and its softmax; P_0 waits for V_0 in the loop (or the epilogue).
            mbarrier.wait(k_ready.index(index), phase)
            turn_phase = _turn_wait(turns, turn_phase, CID, PINGPONG)
            k_t = k_smem.index(index).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0))
            s = warpgroup_mma(q_tile, k_t, s_zero, use_acc=False, is_async=True)
            _turn_pass(turns, CID, PINGPONG)
            s = warpgroup_mma_wait(0, deps=[s])
            mbarrier.arrive(k_empty.index(index), count=1)
            p, alpha, m_i, l_i = _softmax(s, m_i, l_i, 0, n_unmasked, m_row, seq_len, qk_scale, s_layout,
                                          BLOCK_M, BLOCK_N, CAUSAL)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            for j in range(1, n_blocks):
                nxt, nxt_phase = _ring_next(index, phase, STAGES)
                mbarrier.wait(k_ready.index(nxt), nxt_phase)
                mbarrier.wait(v_ready.index(index), phase)
                turn_phase = _turn_wait(turns, turn_phase, CID, PINGPONG)
                k_t = k_smem.index(nxt).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0))
                s = warpgroup_mma(q_tile, k_t, s_zero, use_acc=False, is_async=True)       # S_j
                v = v_smem.index(index).reshape([BLOCK_N, HEAD_DIM])
                acc = warpgroup_mma(p_op, v, acc, is_async=True)                          # O += P_{j-1} V_{j-1}
                _turn_pass(turns, CID, PINGPONG)
                s = warpgroup_mma_wait(1, deps=[s])                                      # S_j done, PV in flight
                mbarrier.arrive(k_empty.index(nxt), count=1)
                p, alpha, m_i, l_i = _softmax(s, m_i, l_i, j, n_unmasked, m_row, seq_len, qk_scale, s_layout,
                                              BLOCK_M, BLOCK_N, CAUSAL)
                acc, p_op = warpgroup_mma_wait(0, deps=[acc, p_op])                      # PV done: V_{j-1} free
                mbarrier.arrive(v_empty.index(index), count=1)
                acc = _rescale(acc, alpha, o_layout)
                p_op = gl.convert_layout(p.to(dtype), p_layout)
                index, phase = nxt, nxt_phase
            # Epilogue: the last P V.
            mbarrier.wait(v_ready.index(index), phase)
            turn_phase = _turn_wait(turns, turn_phase, CID, PINGPONG)
            acc = warpgroup_mma(p_op, v_smem.index(index).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
            _turn_pass(turns, CID, PINGPONG)
            acc, p_op = warpgroup_mma_wait(0, deps=[acc, p_op])
            mbarrier.arrive(v_empty.index(index), count=1)
            index, phase = _ring_next(index, phase, STAGES)
        else:
            # One turn covers P_{j-1} V_{j-1} and Q K_jᵀ (FA3's order): wait here, pass after Q K_jᵀ.
            turn_phase = _turn_wait(turns, turn_phase, CID, PINGPONG)
            for j in range(n_blocks):
                mbarrier.wait(k_ready.index(index), phase)
                k_t = k_smem.index(index).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0))
                s = warpgroup_mma(q_tile, k_t, s_zero, use_acc=False, is_async=True)
                _turn_pass(turns, CID, PINGPONG)
                s = warpgroup_mma_wait(0, deps=[s])
                mbarrier.arrive(k_empty.index(index), count=1)
                p, alpha, m_i, l_i = _softmax(s, m_i, l_i, j, n_unmasked, m_row, seq_len, qk_scale, s_layout,
                                              BLOCK_M, BLOCK_N, CAUSAL)
                acc = _rescale(acc, alpha, o_layout)
                p_op = gl.convert_layout(p.to(dtype), p_layout)
                mbarrier.wait(v_ready.index(index), phase)
                turn_phase = _turn_wait(turns, turn_phase, CID, PINGPONG)
                v = v_smem.index(index).reshape([BLOCK_N, HEAD_DIM])
                acc = warpgroup_mma(p_op, v, acc, is_async=True)
                acc, p_op = warpgroup_mma_wait(0, deps=[acc, p_op])
                mbarrier.arrive(v_empty.index(index), count=1)
                index, phase = _ring_next(index, phase, STAGES)
            _turn_pass(turns, CID, PINGPONG)

        # O = acc / l, written through q_buf (Q is dead: its last wgmma has retired).
        l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
        out = (acc / gl.expand_dims(l_o, 1)).to(dtype)
        q_tile.store(out)
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [b, h, m_row, 0], q_buf)
    tma.store_wait(0)


@gluon.jit
def _consumer1(q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty,
               turns, qk_scale, seq_len, heads, kv_group, num_m, num_tiles,
               BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
               CONSUMERS: gl.constexpr, CAUSAL: gl.constexpr, PERSISTENT: gl.constexpr, PINGPONG: gl.constexpr,
               OVERLAP: gl.constexpr):
    _consumer(q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty,
              turns, qk_scale, seq_len, heads, kv_group, num_m, num_tiles, 1, BLOCK_M, BLOCK_N, HEAD_DIM,
              STAGES, CONSUMERS, CAUSAL, PERSISTENT, PINGPONG, OVERLAP)


# The int arguments are not specialized (Triton would otherwise compile one kernel for S == 1, one for S % 16 == 0,
# ...): one compile serves every shape of a config, and compile.py's signature is exactly the launch's.
@gluon.jit(do_not_specialize=["seq_len", "heads", "kv_group", "num_m", "num_tiles"])
def attn_fwd_ws(q_desc, k_desc, v_desc, o_desc, qk_scale, seq_len, heads, kv_group, num_m, num_tiles,
                HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                CONSUMERS: gl.constexpr, CAUSAL: gl.constexpr, PERSISTENT: gl.constexpr, PINGPONG: gl.constexpr,
                OVERLAP: gl.constexpr, PRODUCER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr):
    """Descriptors are 4-D [B, H, S, D] (K and V over the kv heads) with boxes [1, 1, rows, D]."""
    gl.static_assert(CONSUMERS == 1 or CONSUMERS == 2)
    gl.static_assert(not PINGPONG or CONSUMERS == 2)
    TILE_M: gl.constexpr = CONSUMERS * BLOCK_M
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [CONSUMERS] + q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    q_bars = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], bar_layout)
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], bar_layout)
    for i in gl.static_range(CONSUMERS):
        mbarrier.init(q_bars.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=CONSUMERS)
        mbarrier.init(v_empty.index(i), count=CONSUMERS)
    for i in gl.static_range(2):
        mbarrier.init(turns.index(i), count=1)
    fence_async_shared()  # barrier inits visible to the async proxy (TMA) before first use

    # Worker arguments are spelled out: a tuple built with "+" turns constexprs into plain ints, which
    # warp_specialize cannot pass to a worker.
    if CONSUMERS == 2:
        gl.warp_specialize([
            (_consumer, (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty,
                         v_ready, v_empty, turns, qk_scale, seq_len, heads, kv_group, num_m, num_tiles,
                         0, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CONSUMERS, CAUSAL, PERSISTENT, PINGPONG, OVERLAP)),
            (_consumer1, (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty,
                          v_ready, v_empty, turns, qk_scale, seq_len, heads, kv_group, num_m, num_tiles,
                          BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CONSUMERS, CAUSAL, PERSISTENT, PINGPONG, OVERLAP)),
            (_producer, (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty,
                         v_ready, v_empty, turns, qk_scale, seq_len, heads, kv_group, num_m, num_tiles,
                         TILE_M, BLOCK_N, STAGES, CAUSAL, PERSISTENT)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
    else:
        gl.warp_specialize([
            (_consumer, (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty,
                         v_ready, v_empty, turns, qk_scale, seq_len, heads, kv_group, num_m, num_tiles,
                         0, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CONSUMERS, CAUSAL, PERSISTENT, PINGPONG, OVERLAP)),
            (_producer, (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty,
                         v_ready, v_empty, turns, qk_scale, seq_len, heads, kv_group, num_m, num_tiles,
                         TILE_M, BLOCK_N, STAGES, CAUSAL, PERSISTENT)),
        ], [1], [PRODUCER_REGS])
