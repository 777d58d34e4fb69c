"""FlashAttention-style forward kernel (Triton JIT code only; the launcher lives in ``launch.py``).

One program computes BLOCK_M query rows of one (batch, head). It streams the keys and values in blocks of
BLOCK_N, keeping an online softmax in fp32 (running max ``m_i``, running sum ``l_i``) and an fp32
accumulator, with the softmax scale folded into an exp2. Tails are masked: S need not be a multiple of
either block, and HEAD_DIM need not be a power of two (BLOCK_D pads it).

Variants, all compile-time parameters that the search space explores:
- CAUSAL_SPLIT: in causal mode, run the blocks strictly below the diagonal without any mask, then the
  blocks that touch the diagonal with the causal mask. The boundary is rounded down to a multiple of
  BLOCK_N, so the split is correct for every BLOCK_M / BLOCK_N pair (the classic two-loop kernel silently
  breaks when BLOCK_N > BLOCK_M; this one does not).
- Non-causal runs the full key blocks without a mask and masks only the last, partial block.
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
    k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
    offs_m, offs_n, offs_d,
    lo, hi, seq_len, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    MASK_CAUSAL: tl.constexpr, MASK_TAIL: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k_ptrs = k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd
        v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd
        if MASK_TAIL:
            col_ok = cols < seq_len
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
def attn_fwd(
    Q, K, V, Out, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, seq_len,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, CAUSAL_SPLIT: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    o_base = Out + off_b * stride_ob + off_h * stride_oh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < seq_len
    d_ok = offs_d < HEAD_DIM
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if CAUSAL:
        hi = tl.minimum((pid_m + 1) * BLOCK_M, seq_len)
        if CAUSAL_SPLIT:
            # Key blocks entirely below this row block's diagonal need no mask at all.
            diag = (pid_m * BLOCK_M) // BLOCK_N * BLOCK_N
            acc, l_i, m_i = _attn_inner(
                acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                offs_m, offs_n, offs_d, 0, diag, seq_len, qk_scale,
                BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, False, False, UPCAST_DOT)
            acc, l_i, m_i = _attn_inner(
                acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                offs_m, offs_n, offs_d, diag, hi, seq_len, qk_scale,
                BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, True, True, UPCAST_DOT)
        else:
            acc, l_i, m_i = _attn_inner(
                acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                offs_m, offs_n, offs_d, 0, hi, seq_len, qk_scale,
                BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, True, True, UPCAST_DOT)
    else:
        full = seq_len // BLOCK_N * BLOCK_N
        acc, l_i, m_i = _attn_inner(
            acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            offs_m, offs_n, offs_d, 0, full, seq_len, qk_scale,
            BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, False, False, UPCAST_DOT)
        acc, l_i, m_i = _attn_inner(
            acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            offs_m, offs_n, offs_d, full, seq_len, seq_len, qk_scale,
            BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, False, True, UPCAST_DOT)

    out = acc / l_i[:, None]
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
