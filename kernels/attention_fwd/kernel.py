"""FlashAttention-style forward kernel (Triton JIT code only; the launcher lives in ``launch.py``).

One tile is BLOCK_M query rows of one (batch, head). A tile streams the keys and values in blocks of BLOCK_N,
keeping an online softmax in fp32 (running max ``m_i``, running sum ``l_i``) and an fp32 accumulator, with the
softmax scale folded into an exp2. Tails are masked: S need not be a multiple of either block, and HEAD_DIM
need not be a power of two (BLOCK_D pads it).

Variants, all compile-time parameters (kernels/attention_fwd/space.toml says which ones a sweep searches):
- CAUSAL_SPLIT: in causal mode, run the blocks strictly below the diagonal without any mask, then the
  blocks that touch the diagonal with the causal mask. The boundary is rounded down to a multiple of
  BLOCK_N, so the split is correct for every BLOCK_M / BLOCK_N pair (the classic two-loop kernel silently
  breaks when BLOCK_N > BLOCK_M; this one does not).
  Non-causal runs the full key blocks without a mask and masks only the last, partial block.
- LOADS: how Q, K and V tiles reach the program.
  "pointer": pointer arithmetic and masked loads (cp.async pipelining on Hopper).
  "device_tma": device-side tensor descriptors (``tl.make_tensor_descriptor``, the Tensor Memory Accelerator
  on Hopper), one 2-D descriptor of shape [S, HEAD_DIM] per tensor and tile, based at its (batch, head):
  the hardware zero-fills rows past S and columns past HEAD_DIM and never reads the next head. Each tile
  writes its descriptors to global scratch (the launcher's allocator) before its first load.
  "host_tma": one 4-D descriptor [B, H, S, HEAD_DIM] per tensor, built by the launcher and passed as a
  kernel parameter; blocks are [1, 1, rows, BLOCK_D], so the bounds are again per (batch, head) and the
  kernel pays nothing to make them.
  With either TMA path the score tile is still masked past S (a zero-filled key gives a score of 0, not
  -inf). The output is always stored through pointers.
- Tile order (which program runs which tile; all orders compute the same thing):
  HEADS_FIRST False: consecutive programs take consecutive query blocks of one head (its K and V stay hot in
  L2). True: consecutive programs take the same query block of consecutive heads.
  REVERSE: query blocks go from the last to the first, so that in causal mode the longest rows start first
  and the short ones fill the tail of the launch.
- WARP_SPECIALIZE: the key loops as ``tl.range(..., warp_specialize=True)``: Triton 3.6 splits them into
  producer (loads) and consumer (math) warps. Its docs call this Blackwell-only, but on the H100 it compiled
  and ran for 8-warp configs (and failed to compile for 4-warp ones; see search_spaces/rules.py).
- PERSISTENT: launch a fixed number of programs (the launcher passes SMs x programs per SM) that loop over the
  tiles in the order above, instead of one program per tile.
"""

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    # UPCAST runs the product in fp32 on the same (already rounded) operand values. The launcher sets it only
    # under Triton 3.6's CPU interpreter, whose bf16 dot is wrong; compiled kernels always use native dots.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _attn_inner(
    acc, l_i, m_i, q,
    k_src, v_src, b, h, stride_kn, stride_kd, stride_vn, stride_vd,
    offs_m, offs_n, offs_d,
    lo, hi, seq_len, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    MASK_CAUSAL: tl.constexpr, MASK_TAIL: tl.constexpr, LOADS: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    # k_src / v_src: base pointers of head (b, h) ("pointer"), its 2-D descriptors ("device_tma"), or the
    # whole tensors' 4-D descriptors ("host_tma").
    d_ok = offs_d < HEAD_DIM
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        col_ok = cols < seq_len
        if LOADS == "host_tma":
            k = tl.trans(k_src.load([b, h, start_n, 0]).reshape(BLOCK_N, BLOCK_D))  # zeros past S and D
        elif LOADS == "device_tma":
            k = tl.trans(k_src.load([start_n, 0]))  # rows past S and columns past HEAD_DIM come back as zeros
        else:
            k_ptrs = k_src + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd
            if MASK_TAIL:
                k = tl.load(k_ptrs, mask=col_ok[None, :] & d_ok[:, None], other=0.0)
            elif BLOCK_D != HEAD_DIM:
                k = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
            else:
                k = tl.load(k_ptrs)
        qk = _dot(q, k, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), UPCAST_DOT)
        if MASK_CAUSAL:
            qk = tl.where(offs_m[:, None] >= cols[None, :], qk, float("-inf"))
        if MASK_TAIL:
            qk = tl.where(col_ok[None, :], qk, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if LOADS == "host_tma":
            v = v_src.load([b, h, start_n, 0]).reshape(BLOCK_N, BLOCK_D)
        elif LOADS == "device_tma":
            v = v_src.load([start_n, 0])
        else:
            v_ptrs = v_src + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd
            if MASK_TAIL:
                v = tl.load(v_ptrs, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            elif BLOCK_D != HEAD_DIM:
                v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
            else:
                v = tl.load(v_ptrs)
        acc = _dot(p.to(v.dtype), v, acc, UPCAST_DOT)
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit
def _attn_tile(
    Q, K, V, Out, qk_scale, pid_m, pid_bh, H,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    seq_len,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, CAUSAL_SPLIT: tl.constexpr, LOADS: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """Query block ``pid_m`` of head ``pid_bh`` (= b * H + h): the whole online softmax, then the store."""
    b = pid_bh // H
    h = pid_bh % H
    off_b = b.to(tl.int64)
    off_h = h.to(tl.int64)
    o_base = Out + off_b * stride_ob + off_h * stride_oh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < seq_len
    d_ok = offs_d < HEAD_DIM
    if LOADS == "host_tma":
        # Q, K, V are [B, H, S, HEAD_DIM] descriptors with [1, 1, rows, BLOCK_D] blocks (zero-filled past S, D).
        k_src = K
        v_src = V
        q = Q.load([b, h, pid_m * BLOCK_M, 0]).reshape(BLOCK_M, BLOCK_D)
    elif LOADS == "device_tma":
        # One descriptor per tensor and (batch, head): its bounds are this head's [S, HEAD_DIM], so the
        # hardware zero-fills out-of-bounds rows and columns. The launcher guarantees a unit last stride and
        # 16-byte aligned bases and row strides.
        q_base = Q + off_b * stride_qb + off_h * stride_qh
        q_desc = tl.make_tensor_descriptor(q_base, shape=[seq_len, HEAD_DIM], strides=[stride_qm, 1],
                                           block_shape=[BLOCK_M, BLOCK_D])
        k_src = tl.make_tensor_descriptor(K + off_b * stride_kb + off_h * stride_kh, shape=[seq_len, HEAD_DIM],
                                          strides=[stride_kn, 1], block_shape=[BLOCK_N, BLOCK_D])
        v_src = tl.make_tensor_descriptor(V + off_b * stride_vb + off_h * stride_vh, shape=[seq_len, HEAD_DIM],
                                          strides=[stride_vn, 1], block_shape=[BLOCK_N, BLOCK_D])
        q = q_desc.load([pid_m * BLOCK_M, 0])
    else:
        k_src = K + off_b * stride_kb + off_h * stride_kh
        v_src = V + off_b * stride_vb + off_h * stride_vh
        q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm
                    + offs_d[None, :] * stride_qd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if CAUSAL:
        hi = tl.minimum((pid_m + 1) * BLOCK_M, seq_len)
        if CAUSAL_SPLIT:
            # Key blocks entirely below this row block's diagonal need no mask at all.
            diag = (pid_m * BLOCK_M) // BLOCK_N * BLOCK_N
            acc, l_i, m_i = _attn_inner(
                acc, l_i, m_i, q, k_src, v_src, b, h, stride_kn, stride_kd, stride_vn, stride_vd,
                offs_m, offs_n, offs_d, 0, diag, seq_len, qk_scale,
                BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, False, False, LOADS, WARP_SPECIALIZE, UPCAST_DOT)
            acc, l_i, m_i = _attn_inner(
                acc, l_i, m_i, q, k_src, v_src, b, h, stride_kn, stride_kd, stride_vn, stride_vd,
                offs_m, offs_n, offs_d, diag, hi, seq_len, qk_scale,
                BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, True, True, LOADS, WARP_SPECIALIZE, UPCAST_DOT)
        else:
            acc, l_i, m_i = _attn_inner(
                acc, l_i, m_i, q, k_src, v_src, b, h, stride_kn, stride_kd, stride_vn, stride_vd,
                offs_m, offs_n, offs_d, 0, hi, seq_len, qk_scale,
                BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, True, True, LOADS, WARP_SPECIALIZE, UPCAST_DOT)
    else:
        full = seq_len // BLOCK_N * BLOCK_N
        acc, l_i, m_i = _attn_inner(
            acc, l_i, m_i, q, k_src, v_src, b, h, stride_kn, stride_kd, stride_vn, stride_vd,
            offs_m, offs_n, offs_d, 0, full, seq_len, qk_scale,
            BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, False, False, LOADS, WARP_SPECIALIZE, UPCAST_DOT)
        acc, l_i, m_i = _attn_inner(
            acc, l_i, m_i, q, k_src, v_src, b, h, stride_kn, stride_kd, stride_vn, stride_vd,
            offs_m, offs_n, offs_d, full, seq_len, seq_len, qk_scale,
            BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, False, True, LOADS, WARP_SPECIALIZE, UPCAST_DOT)

    out = acc / l_i[:, None]
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def attn_fwd(
    Q, K, V, Out, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, seq_len, num_bh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, CAUSAL_SPLIT: tl.constexpr, LOADS: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
    HEADS_FIRST: tl.constexpr, REVERSE: tl.constexpr, PERSISTENT: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """Grid: PERSISTENT, (programs,); HEADS_FIRST, (B*H, cdiv(S, BLOCK_M)); else (cdiv(S, BLOCK_M), B*H)."""
    num_m = tl.cdiv(seq_len, BLOCK_M)
    if PERSISTENT:
        for tile in range(tl.program_id(0), num_m * num_bh, tl.num_programs(0)):
            if HEADS_FIRST:
                m_idx = tile // num_bh
                pid_bh = tile % num_bh
            else:
                m_idx = tile % num_m
                pid_bh = tile // num_m
            pid_m = m_idx
            if REVERSE:
                pid_m = num_m - 1 - m_idx
            _attn_tile(
                Q, K, V, Out, qk_scale, pid_m, pid_bh, H,
                stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
                stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od,
                seq_len, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL, CAUSAL_SPLIT, LOADS, WARP_SPECIALIZE, UPCAST_DOT)
    else:
        if HEADS_FIRST:
            pid_bh = tl.program_id(0)
            m_idx = tl.program_id(1)
        else:
            m_idx = tl.program_id(0)
            pid_bh = tl.program_id(1)
        pid_m = m_idx
        if REVERSE:
            pid_m = num_m - 1 - m_idx
        _attn_tile(
            Q, K, V, Out, qk_scale, pid_m, pid_bh, H,
            stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
            stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od,
            seq_len, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL, CAUSAL_SPLIT, LOADS, WARP_SPECIALIZE, UPCAST_DOT)


@triton.jit
def attn_fwd_gqa(
    Q, K, V, Out, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, seq_len, num_bh, GROUP,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, CAUSAL_SPLIT: tl.constexpr, LOADS: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
    HEADS_FIRST: tl.constexpr, REVERSE: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """Grouped-query heads: query head h of H reads key/value head h // GROUP (K and V have H / GROUP heads).

    The same tile as ``attn_fwd`` (``_attn_tile``, unchanged): only the K and V base pointers move, by
    (h // GROUP - h) heads, so that the tile's own ``h * stride_kh`` lands on the shared head. Pointer and
    device-TMA loads (descriptors made from those bases); host descriptors cannot be moved (the launcher uses
    device TMA instead). Grid: HEADS_FIRST, (B*H, cdiv(S, BLOCK_M)); else (cdiv(S, BLOCK_M), B*H).
    """
    num_m = tl.cdiv(seq_len, BLOCK_M)
    if HEADS_FIRST:
        pid_bh = tl.program_id(0)
        m_idx = tl.program_id(1)
    else:
        m_idx = tl.program_id(0)
        pid_bh = tl.program_id(1)
    pid_m = m_idx
    if REVERSE:
        pid_m = num_m - 1 - m_idx
    h = (pid_bh % H).to(tl.int64)
    shift = h // GROUP - h
    _attn_tile(
        Q, K + shift * stride_kh, V + shift * stride_vh, Out, qk_scale, pid_m, pid_bh, H,
        stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od,
        seq_len, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL, CAUSAL_SPLIT, LOADS, WARP_SPECIALIZE, UPCAST_DOT)
