"""FP8 (E4M3) FlashAttention-style forward kernel (Triton JIT code only; the launcher is ``launch_fp8.py``).

Same structure as attention_fwd.py (one program per BLOCK_M query rows of one (batch, head), key blocks of
BLOCK_N, online softmax in fp32 with the scale folded into exp2, masked tails, CAUSAL_SPLIT), with the operands
of kernels/quant.py:

- QK_FP8: Q and K are E4M3 and Q·Kᵀ runs in FP8 with fp32 accumulation; the logits are then multiplied by
  q_scale (one per tile: "tensor", "head" or the tile's own block) and k_scale (K_PER_BLOCK: the key block's,
  loaded in the loop; else one per head, loaded once). Otherwise Q and K are the 16-bit inputs (scales 1).
- PV_FP8: P (times 448 when P_SCALE) is cast to E4M3 and P·V runs in FP8, V read from its transposed
  (B, H, D, S) storage so the second operand is K-major. V_PER_BLOCK scales each key block's contribution by
  its V scale; else the per-head V scale and 1/448 are applied once, at the end. Otherwise P is cast to V's
  16-bit dtype (the fp16 kernel's P·V).
- UPCAST_DOT: 16-bit dots in fp32 on the same rounded operands (Triton 3.6's interpreter computes bf16 dots
  wrongly). ROUND_P: round P to the E4M3 grid in fp32 arithmetic before the cast, because the interpreter's
  fp32 -> E4M3 cast truncates subnormals and mis-rounds values that carry into the next binade (31.8 -> 16);
  the rounded values are exactly representable, which it casts correctly. Compiled kernels use neither.
"""

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _round_e4m3(x):
    # Round non-negative fp32 x (<= 448) to the nearest E4M3 value, ties to even: the grid step is 2^(e-3) for
    # binade e (e >= -6; below, the subnormal step 2^-9), and adding 1.5 * 2^23 rounds x / step to an integer.
    bits = x.to(tl.int32, bitcast=True)
    e = tl.maximum(((bits >> 23) & 255) - 127, -6)
    step = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
    r = ((x / step + 12582912.0) - 12582912.0) * step
    return tl.minimum(r, 448.0)


@triton.jit
def _attn_inner(
    acc, l_i, m_i, q, qk_scale,
    k_base, v_base, ks_base, vs_base, stride_kn, stride_kd, stride_vn, stride_vd,
    offs_m, offs_n, offs_d, lo, hi, seq_len,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    MASK_CAUSAL: tl.constexpr, MASK_TAIL: tl.constexpr,
    QK_FP8: tl.constexpr, PV_FP8: tl.constexpr, K_PER_BLOCK: tl.constexpr, V_PER_BLOCK: tl.constexpr,
    P_SCALE: tl.constexpr, UPCAST_QK: tl.constexpr, UPCAST_PV: tl.constexpr, ROUND_P: tl.constexpr,
):
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        col_ok = cols < seq_len
        k_ptrs = k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd
        if MASK_TAIL:
            k = tl.load(k_ptrs, mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
        qk = _dot(q, k, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), UPCAST_QK)
        if K_PER_BLOCK:
            qk = qk * (qk_scale * tl.load(ks_base + start_n // BLOCK_N))
        else:
            qk = qk * qk_scale
        if MASK_CAUSAL:
            qk = tl.where(offs_m[:, None] >= cols[None, :], qk, float("-inf"))
        if MASK_TAIL:
            qk = tl.where(col_ok[None, :], qk, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if PV_FP8:
            # V^T storage: a [BLOCK_D, BLOCK_N] tile with tokens contiguous, transposed into the K-major operand.
            vt_ptrs = v_base + offs_d[:, None] * stride_vd + cols[None, :] * stride_vn
            if MASK_TAIL:
                vt = tl.load(vt_ptrs, mask=d_ok[:, None] & col_ok[None, :], other=0.0)
            else:
                vt = tl.load(vt_ptrs, mask=d_ok[:, None], other=0.0)
            v = tl.trans(vt)
            if P_SCALE:
                p = p * 448.0
            if ROUND_P:
                p = _round_e4m3(p)
            p8 = p.to(v.dtype)
            if V_PER_BLOCK:
                pv = tl.dot(p8, v, tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32))
                acc = acc + pv * tl.load(vs_base + start_n // BLOCK_N)
            else:
                acc = tl.dot(p8, v, acc)
        else:
            v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd
            if MASK_TAIL:
                v = tl.load(v_ptrs, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            else:
                v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
            acc = _dot(p.to(v.dtype), v, acc, UPCAST_PV)
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit
def attn_fwd_fp8(
    Q, K, V, QS, KS, VS, Out, sm_scale_log2,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, seq_len, n_qs, n_ks, n_vs,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, CAUSAL_SPLIT: tl.constexpr,
    QK_FP8: tl.constexpr, PV_FP8: tl.constexpr, Q_PER_BLOCK: tl.constexpr, K_PER_BLOCK: tl.constexpr,
    V_PER_BLOCK: tl.constexpr, P_SCALE: tl.constexpr, UPCAST_DOT: tl.constexpr, ROUND_P: tl.constexpr,
):
    """Grid (cdiv(S, BLOCK_M), B*H). Strides of V are those of its (B, H, S, D) view (of V^T when PV_FP8).
    QS, KS, VS: fp32 (B, H, n_qs / n_ks / n_vs) scales, contiguous."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < seq_len
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    ks_base = KS + pid_bh * n_ks
    vs_base = VS + pid_bh * n_vs
    qk_scale = sm_scale_log2
    if QK_FP8:
        if Q_PER_BLOCK:
            qk_scale = qk_scale * tl.load(QS + pid_bh * n_qs + pid_m)
        else:
            qk_scale = qk_scale * tl.load(QS + pid_bh * n_qs)
        if not K_PER_BLOCK:
            qk_scale = qk_scale * tl.load(ks_base)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    KB: tl.constexpr = QK_FP8 and K_PER_BLOCK
    VB: tl.constexpr = PV_FP8 and V_PER_BLOCK
    UPQK: tl.constexpr = UPCAST_DOT and not QK_FP8
    if CAUSAL:
        hi = tl.minimum((pid_m + 1) * BLOCK_M, seq_len)
        lo = 0
        if CAUSAL_SPLIT:
            lo = (pid_m * BLOCK_M) // BLOCK_N * BLOCK_N  # key blocks before it need no mask
            acc, l_i, m_i = _attn_inner(
                acc, l_i, m_i, q, qk_scale, k_base, v_base, ks_base, vs_base, stride_kn, stride_kd, stride_vn,
                stride_vd, offs_m, offs_n, offs_d, 0, lo, seq_len, BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, False, False,
                QK_FP8, PV_FP8, KB, VB, P_SCALE, UPQK, UPCAST_DOT, ROUND_P)
        acc, l_i, m_i = _attn_inner(
            acc, l_i, m_i, q, qk_scale, k_base, v_base, ks_base, vs_base, stride_kn, stride_kd, stride_vn,
            stride_vd, offs_m, offs_n, offs_d, lo, hi, seq_len, BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, True, True,
            QK_FP8, PV_FP8, KB, VB, P_SCALE, UPQK, UPCAST_DOT, ROUND_P)
    else:
        full = seq_len // BLOCK_N * BLOCK_N
        acc, l_i, m_i = _attn_inner(
            acc, l_i, m_i, q, qk_scale, k_base, v_base, ks_base, vs_base, stride_kn, stride_kd, stride_vn,
            stride_vd, offs_m, offs_n, offs_d, 0, full, seq_len, BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, False, False,
            QK_FP8, PV_FP8, KB, VB, P_SCALE, UPQK, UPCAST_DOT, ROUND_P)
        acc, l_i, m_i = _attn_inner(
            acc, l_i, m_i, q, qk_scale, k_base, v_base, ks_base, vs_base, stride_kn, stride_kd, stride_vn,
            stride_vd, offs_m, offs_n, offs_d, full, seq_len, seq_len, BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, False, True,
            QK_FP8, PV_FP8, KB, VB, P_SCALE, UPQK, UPCAST_DOT, ROUND_P)

    final = 1.0 / l_i
    if PV_FP8:
        if P_SCALE:
            final = final / 448.0
        if not V_PER_BLOCK:
            final = final * tl.load(vs_base)
    out = acc * final[:, None]
    tl.store(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
