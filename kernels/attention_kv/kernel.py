"""Attention with unequal query / key lengths, grouped-query heads and split-KV (Triton JIT code only).

The launcher lives in ``launch.py``; NOTES.md has the design and what is verified.

Shapes: q (B, Hq, L, D), k and v (B, Hkv, S, D) with G = Hq // Hkv; query head h reads kv head h // G.
Masks: a row at query position ``pos`` sees the keys ``j < limit(pos)``, where limit is S without a mask and
``min(S, pos + DIAG + 1)`` with one (DIAG = 0: top-left, SDPA's ``is_causal``; DIAG = S - L: bottom-right,
``causal_lower_right``, the KV-cache case).

Rows of a program (one tile of BLOCK_M rows):
- PACK_GQA False: grid axis 1 is (batch, query head); row r is query position r of that head.
- PACK_GQA True ("pack GQA", as FlashAttention 3): grid axis 1 is (batch, kv head); the tile's rows are the
  L x G (query position, head-in-group) pairs of the G query heads that share the kv head, position-major:
  row r is query position r // G of query head kvh * G + r % G. K and V are loaded once for the whole group,
  and the rows of one position are adjacent, so a tile spans as few positions (and causal limits) as possible.

Split-KV ("flash-decoding", grid axis 2 = NUM_SPLITS): a tile first computes the key range it can see,
[0, hi) with hi the largest row limit of the tile, as ``nblk = cdiv(hi, BLOCK_N)`` key blocks; split s takes
the whole blocks [s * nblk // NS, (s + 1) * nblk // NS) (balanced: sizes differ by at most one block; a split
is empty only when NS > nblk). Within a slice, the blocks every row of the tile sees in full run without a
mask, the rest with the per-row limit.

Outputs: with one split, the normalized output in the output dtype. With several, each (tile, split) writes
fp32 partials to the workspace: PO[s, b, h, pos, :] = the split's own softmax-normalized output (0 where the
row saw no key in the slice) and PLSE[s, b, h, pos] = the natural-log log-sum-exp of the row's scaled scores
over the slice (-inf where it saw none). ``attn_kv_combine`` merges them: out = sum_s w_s PO_s / sum_s w_s
with w_s = exp(PLSE_s - max_s PLSE_s).
"""

import triton
import triton.language as tl

LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    # UPCAST runs the product in fp32 on the same (already rounded) operand values. The launcher sets it only
    # under Triton 3.6's CPU interpreter, whose bf16 dot is wrong; compiled kernels always use native dots.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _kv_block(base, blk, stride_n, stride_d, offs_n, offs_d, kv_len,
              BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              MASK_N: tl.constexpr, TRANS: tl.constexpr):
    """Key block ``blk`` of one kv head at ``base``: [BLOCK_D, BLOCK_N] when TRANS (K), else [BLOCK_N, BLOCK_D].

    The only place that turns a block index into addresses: a paged cache would map ``blk`` through its
    block table here (base of the physical block, offsets within it)."""
    cols = blk * BLOCK_N + offs_n
    if TRANS:
        ptrs = base + cols[None, :] * stride_n + offs_d[:, None] * stride_d
        mask = (cols[None, :] < kv_len) & (offs_d[:, None] < HEAD_DIM)
    else:
        ptrs = base + cols[:, None] * stride_n + offs_d[None, :] * stride_d
        mask = (cols[:, None] < kv_len) & (offs_d[None, :] < HEAD_DIM)
    if MASK_N:
        return tl.load(ptrs, mask=mask, other=0.0)
    if BLOCK_D != HEAD_DIM:
        return tl.load(ptrs, mask=mask, other=0.0)  # the column part of the mask is all true here
    return tl.load(ptrs)


@triton.jit
def _kv_loop(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
             limit, offs_n, offs_d, blk_lo, blk_hi, kv_len, qk_scale,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
             MASKED: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """Online softmax over key blocks [blk_lo, blk_hi). MASKED: key j counts for row r only if j < limit[r]
    (also past S); a row may then see nothing in a block, so -inf maxima are guarded (no exp2(-inf + inf))."""
    for blk in range(blk_lo, blk_hi):
        k = _kv_block(k_base, blk, stride_kn, stride_kd, offs_n, offs_d, kv_len,
                      BLOCK_N, HEAD_DIM, BLOCK_D, MASKED, True)
        s = _dot(q, k, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), UPCAST_DOT) * qk_scale
        if MASKED:
            cols = blk * BLOCK_N + offs_n
            s = tl.where(cols[None, :] < limit[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = m_new
        if MASKED:
            # A row that has seen no key yet keeps m = -inf (a later block's true max is not clamped), and
            # subtracts 0 instead, so that p and alpha come out 0 rather than exp2(-inf + inf) = NaN.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = _kv_block(v_base, blk, stride_vn, stride_vd, offs_n, offs_d, kv_len,
                      BLOCK_N, HEAD_DIM, BLOCK_D, MASKED, False)
        acc = _dot(p.to(v.dtype), v, acc, UPCAST_DOT)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attn_kv_fwd(
    Q, K, V, Out, PO, PLSE, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_ps, stride_pb, stride_ph, stride_pm, stride_pd,
    stride_ls, stride_lb, stride_lh, stride_lm,
    H_GRID, G, kv_len, diag, n_rows,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, PACK_GQA: tl.constexpr, SPLIT: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """Grid (cdiv(n_rows, BLOCK_M), B * H_GRID, NUM_SPLITS); H_GRID is Hkv when packed, else Hq; n_rows is
    L * G when packed, else L. ``diag`` is DIAG of the module docstring; ``qk_scale`` = sm_scale * log2(e).
    SPLIT: write PO / PLSE (split-KV) instead of Out."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    b = (pid_bh // H_GRID).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if PACK_GQA:
        kvh = pid_bh % H_GRID
        pos = rows // G
        head = (kvh * G + rows % G).to(tl.int64)
    else:
        kvh = (pid_bh % H_GRID) // G
        pos = rows
        head = tl.zeros([BLOCK_M], dtype=tl.int64) + pid_bh % H_GRID
    kvh = kvh.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    io_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + b * stride_qb + head[:, None] * stride_qh + pos[:, None] * stride_qm
                + offs_d[None, :] * stride_qd, mask=io_mask, other=0.0)

    # Key limits: every row of the tile sees [0, lo_limit) in full; the tile as a whole sees [0, hi).
    first_row = pid_m * BLOCK_M
    last_row = tl.minimum(first_row + BLOCK_M, n_rows) - 1
    if PACK_GQA:
        first_pos = first_row // G
        last_pos = last_row // G
    else:
        first_pos = first_row
        last_pos = last_row
    if CAUSAL:
        limit = tl.minimum(pos + diag + 1, kv_len)
        lo_limit = tl.minimum(first_pos + diag + 1, kv_len)
        hi = tl.minimum(last_pos + diag + 1, kv_len)
    else:
        limit = tl.zeros([BLOCK_M], dtype=tl.int32) + kv_len
        lo_limit = kv_len
        hi = kv_len
    nblk = tl.cdiv(hi, BLOCK_N)
    blk_lo = split * nblk // num_splits
    blk_hi = (split + 1) * nblk // num_splits
    blk_mid = tl.maximum(blk_lo, tl.minimum(blk_hi, lo_limit // BLOCK_N))  # first block needing the mask

    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc, l_i, m_i = _kv_loop(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                             limit, offs_n, offs_d, blk_lo, blk_mid, kv_len, qk_scale,
                             BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, False, UPCAST_DOT)
    acc, l_i, m_i = _kv_loop(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                             limit, offs_n, offs_d, blk_mid, blk_hi, kv_len, qk_scale,
                             BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, True, UPCAST_DOT)

    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    if SPLIT:
        lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))
        tl.store(PO + split * stride_ps + b * stride_pb + head[:, None] * stride_ph + pos[:, None] * stride_pm
                 + offs_d[None, :] * stride_pd, out, mask=io_mask)
        tl.store(PLSE + split * stride_ls + b * stride_lb + head * stride_lh + pos * stride_lm, lse, mask=row_ok)
    else:
        tl.store(Out + b * stride_ob + head[:, None] * stride_oh + pos[:, None] * stride_om
                 + offs_d[None, :] * stride_od, out.to(Out.dtype.element_ty), mask=io_mask)


@triton.jit
def attn_kv_combine(
    PO, PLSE, Out, num_splits, H, q_len,
    stride_ps, stride_pb, stride_ph, stride_pm, stride_pd,
    stride_ls, stride_lb, stride_lh, stride_lm,
    stride_ob, stride_oh, stride_om, stride_od,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Grid (cdiv(H * L, BLOCK_R), B): BLOCK_R (head, position) rows of one batch, row r = head r // L,
    position r % L. out = sum_s w_s PO_s / sum_s w_s, w_s = exp(PLSE_s - max_s PLSE_s); a split with
    PLSE = -inf contributes nothing whatever its PO holds; a row with no finite PLSE gets 0."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    b = tl.program_id(1).to(tl.int64)
    row_ok = rows < H * q_len
    head = (rows // q_len).to(tl.int64)
    pos = rows % q_len
    offs_d = tl.arange(0, BLOCK_D)
    io_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    lse_ptrs = PLSE + b * stride_lb + head * stride_lh + pos * stride_lm
    po_ptrs = PO + b * stride_pb + head[:, None] * stride_ph + pos[:, None] * stride_pm + offs_d[None, :] * stride_pd

    m = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    for s in range(num_splits):
        m = tl.maximum(m, tl.load(lse_ptrs + s * stride_ls, mask=row_ok, other=float("-inf")))
    m = tl.where(m == float("-inf"), 0.0, m)
    den = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for s in range(num_splits):
        lse = tl.load(lse_ptrs + s * stride_ls, mask=row_ok, other=float("-inf"))
        live = lse > float("-inf")
        w = tl.where(live, tl.math.exp2((lse - m) * LOG2E), 0.0)
        po = tl.load(po_ptrs + s * stride_ps, mask=io_mask & live[:, None], other=0.0)
        den += w
        acc += w[:, None] * po
    out = acc / tl.where(den > 0.0, den, 1.0)[:, None]
    tl.store(Out + b * stride_ob + head[:, None] * stride_oh + pos[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=io_mask)
