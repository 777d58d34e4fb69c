"""Planted-bug kernels: a small correct attention kernel with one switch per classic bug.

BUG = 0 is correct (the tests prove it passes the gate); every other value plants one bug that a careless
kernel could ship and that raises no error. The gate must reject each of them.
"""

import math

import torch
import triton
import triton.language as tl

BUGS = {
    "none": 0,
    "causal_mask_excludes_diagonal": 1,
    "unmasked_tail": 2,
    "no_running_max": 3,     # exp overflows on large logits: inf / NaN
    "block_loop_off_by_one": 4,
    "last_row_never_written": 5,
}


@triton.jit
def planted_attn(Q, K, V, Out, qk_scale, H, S,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, BUG: tl.constexpr):
    pid_m = tl.program_id(0)
    base = tl.program_id(1).to(tl.int64) * S * HEAD_DIM
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=offs_m[:, None] < S, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    hi = S
    if BUG == 4:
        hi = (tl.cdiv(S, BLOCK_N) - 1) * BLOCK_N
    for start in range(0, hi, BLOCK_N):
        cols = start + offs_n
        k = tl.load(K + base + cols[None, :] * HEAD_DIM + offs_d[:, None], mask=cols[None, :] < S, other=0.0)
        qk = tl.dot(q, k) * qk_scale
        if BUG != 2:
            qk = tl.where(cols[None, :] < S, qk, float("-inf"))
        if CAUSAL:
            if BUG == 1:
                qk = tl.where(offs_m[:, None] > cols[None, :], qk, float("-inf"))
            else:
                qk = tl.where(offs_m[:, None] >= cols[None, :], qk, float("-inf"))
        if BUG == 3:
            p = tl.math.exp2(qk)
            l_i += tl.sum(p, 1)
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            p = tl.math.exp2(qk - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            m_i = m_new
        v = tl.load(V + base + cols[:, None] * HEAD_DIM + offs_d[None, :], mask=cols[:, None] < S, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc)
    rows = S - 1 if BUG == 5 else S
    tl.store(Out + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], (acc / l_i[:, None]).to(Out.dtype.element_ty),
             mask=offs_m[:, None] < rows)


def make_launcher(bug: str):
    """A launcher with the family's signature running the planted kernel with ``bug``."""

    def launch(q, k, v, config, *, causal=False, sm_scale=None, out=None):
        b, h, s, d = q.shape
        q, k, v = (x.contiguous() for x in (q, k, v))
        out = torch.empty_like(q) if out is None else out
        scale = (1.0 / math.sqrt(d) if sm_scale is None else sm_scale) * 1.4426950408889634
        grid = (triton.cdiv(s, config["BLOCK_M"]), b * h)
        planted_attn[grid](q, k, v, out, scale, h, s, HEAD_DIM=d, BLOCK_M=config["BLOCK_M"],
                           BLOCK_N=config["BLOCK_N"], CAUSAL=causal, BUG=BUGS[bug], num_warps=config["num_warps"])
        return out

    return launch
