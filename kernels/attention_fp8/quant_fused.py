"""Triton kernels for FP8 quantization (JIT code only; the launcher is kernels/quant_launch.py).

Two passes over a (B, H, S, D) 16-bit tensor, one program per tile of BLOCK_S tokens of one (batch, head):
``block_amax`` writes each tile's max |x| (after subtracting K's token mean when SMOOTH), and ``cast_fp8``
writes x / scale (mean subtracted first when SMOOTH), clamped to ±448, as E4M3, tokens-major or transposed
(V's K-major layout, padded tokens written as zeros). Every step is the fp32 operation ``kernels.quant``'s
PyTorch code performs, in the same order, so the bytes are the same.
"""

import triton
import triton.language as tl


@triton.jit
def block_amax(X, Mean, Amax, stride_xb, stride_xh, stride_xs, H, S, N_BLOCKS,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, SMOOTH: tl.constexpr):
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_s = blk * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_s[:, None] < S) & (offs_d[None, :] < HEAD_DIM)
    ptrs = X + b * stride_xb + h * stride_xh + offs_s[:, None] * stride_xs + offs_d[None, :]
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if SMOOTH:
        mean = tl.load(Mean + bh * HEAD_DIM + offs_d, mask=offs_d < HEAD_DIM, other=0.0)
        x = tl.where(mask, x - mean[None, :], 0.0)
    tl.store(Amax + bh * N_BLOCKS + blk, tl.max(tl.max(tl.abs(x), axis=1), axis=0))


@triton.jit
def _round_e4m3(y):
    """fp32 ``y`` (|y| <= 448) rounded to the nearest E4M3 value, ties to even, in exact fp32 arithmetic, so the
    cast after it is exact. The GPU's conversion rounds the same way by itself; Triton 3.6's interpreter does
    not (it drops the carry when rounding up crosses a power of two: 7.9 becomes 4)."""
    a = tl.abs(y)
    e = tl.maximum(((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)  # subnormals: the exponent -6
    ulp = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2^(e-3): E4M3 has 3 mantissa bits
    inv = ((127 - (e - 3)) << 23).to(tl.float32, bitcast=True)
    t = a * inv + 0.5  # exact: a * 2^(3-e) < 16 keeps 20 fraction bits
    r = tl.floor(t)
    r = tl.where((r == t) & ((r.to(tl.int32) & 1) == 1), r - 1.0, r)  # a tie goes to the even neighbour
    mag = (r * ulp).to(tl.int32, bitcast=True)
    sign = y.to(tl.int32, bitcast=True) < 0  # the sign bit, so -0.0 stays -0.0 (Triton's unary minus is 0 - x)
    return tl.where(sign, mag | -2147483648, mag).to(tl.float32, bitcast=True)


@triton.jit
def cast_fp8(X, Mean, Scales, Y, stride_xb, stride_xh, stride_xs, stride_yb, stride_yh, stride_yr, stride_yc,
             H, S, S_OUT, N_SCALES, SCALE_BLOCK,
             HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, SMOOTH: tl.constexpr,
             TRANSPOSE: tl.constexpr):
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_s = blk * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    in_mask = (offs_s[:, None] < S) & (offs_d[None, :] < HEAD_DIM)
    ptrs = X + b * stride_xb + h * stride_xh + offs_s[:, None] * stride_xs + offs_d[None, :]
    x = tl.load(ptrs, mask=in_mask, other=0.0).to(tl.float32)
    if SMOOTH:
        mean = tl.load(Mean + bh * HEAD_DIM + offs_d, mask=offs_d < HEAD_DIM, other=0.0)
        x = x - mean[None, :]
    group = tl.minimum(offs_s // SCALE_BLOCK, N_SCALES - 1)  # SCALE_BLOCK > S when one scale covers the head
    scale = tl.load(Scales + bh * N_SCALES + group)
    y = tl.math.div_rn(x, scale[:, None])
    y = tl.minimum(tl.maximum(y, -448.0), 448.0)
    y = _round_e4m3(tl.where(in_mask, y, 0.0)).to(tl.float8e4nv)
    out_mask = (offs_s[:, None] < S_OUT) & (offs_d[None, :] < HEAD_DIM)
    if TRANSPOSE:  # (B, H, D, S_OUT): row = head dim, column = token
        out = Y + b * stride_yb + h * stride_yh + offs_d[None, :] * stride_yr + offs_s[:, None] * stride_yc
    else:  # (B, H, S, D)
        out = Y + b * stride_yb + h * stride_yh + offs_s[:, None] * stride_yr + offs_d[None, :] * stride_yc
    tl.store(out, y, mask=out_mask)
