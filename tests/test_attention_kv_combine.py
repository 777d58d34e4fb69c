"""The split-KV combine kernel alone (Triton's interpreter), against a direct computation in PyTorch.

Workspace contract (kernels/attention_kv/launch.py): partial_out (NS, B, H, L, D) fp32 is each split's own
softmax-normalized output, partial_lse (NS, B, H, L) fp32 its natural-log LSE, -inf for a split a row saw
nothing of (whatever partial_out holds there)."""

from __future__ import annotations

import pytest
import torch

from flashcore.autotune import check
from flashcore.kernels import KernelInputError
from flashcore.kernels.attention_kv.launch import combine


def direct(partial_out, partial_lse):
    """Σ_s exp(lse_s - M) o_s / Σ_s exp(lse_s - M) in float64, skipping -inf splits; 0 for rows with none."""
    lse = partial_lse.double()
    live = torch.isfinite(lse)
    m = lse.amax(0)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.where(live, torch.exp(lse - m), torch.zeros_like(lse))
    o = torch.where(live[..., None], partial_out.double(), torch.zeros((), dtype=torch.float64))
    den = w.sum(0)
    return ((w[..., None] * o).sum(0) / torch.where(den > 0, den, torch.ones_like(den))[..., None]).float()


def partials(ns, b, h, lq, d, seed=0, spread=3.0):
    gen = torch.Generator().manual_seed(seed)
    po = torch.randn(ns, b, h, lq, d, generator=gen)
    plse = torch.randn(ns, b, h, lq, generator=gen) * spread
    return po, plse


def run(po, plse, dtype=torch.float32):
    out = torch.full(po.shape[1:], float("nan"), dtype=dtype)
    assert combine(po, plse, out) is out
    return out


@pytest.mark.parametrize("ns, shape", [(1, (2, 3, 5, 64)), (2, (1, 4, 1, 48)), (7, (2, 5, 3, 32)),
                                       (64, (1, 2, 2, 128))], ids=["NS1", "NS2-D48", "NS7", "NS64-D128"])
def test_combine_matches_direct(ns, shape):
    po, plse = partials(ns, *shape)
    torch.testing.assert_close(run(po, plse), direct(po, plse), atol=1e-5, rtol=1e-5)


def test_one_split_is_a_copy():
    po, plse = partials(1, 2, 3, 4, 32)
    torch.testing.assert_close(run(po, plse), po[0], atol=0, rtol=0)


def test_empty_splits_contribute_nothing_even_holding_nan():
    po, plse = partials(6, 2, 3, 4, 64, seed=1)
    empty = torch.rand(plse.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    empty[0, 0, 0, 0] = False  # at least one live split in that row, others may have none
    plse[empty] = -torch.inf
    po[empty] = torch.nan  # what an unwritten workspace might hold
    ref = direct(po, plse)
    out = run(po, plse)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # A row whose only live split is s equals that split's output.
    only = (~empty).sum(0) == 1
    if only.any():
        s = (~empty).float().argmax(0)
        picked = po.gather(0, s[None, ..., None].expand(1, *po.shape[1:]))[0]
        torch.testing.assert_close(out[only], picked[only], atol=1e-6, rtol=1e-6)


def test_rows_with_no_live_split_become_zero():
    po, plse = partials(3, 1, 2, 3, 16)
    plse[:, 0, 1, 2] = -torch.inf
    po[:, 0, 1, 2] = torch.nan
    out = run(po, plse)
    assert (out[0, 1, 2] == 0).all() and torch.isfinite(out).all()


def test_large_lse_spread_is_stable():
    # LSEs ±1e4 apart: exp without the max subtraction overflows; one split dominates each row.
    po, plse = partials(4, 1, 2, 3, 32, spread=1e4)
    out = run(po, plse)
    assert torch.isfinite(out).all()
    dominant = po.gather(0, plse.argmax(0)[None, ..., None].expand(1, *po.shape[1:]))[0]
    torch.testing.assert_close(out, dominant, atol=1e-5, rtol=1e-5)


def test_splits_of_real_attention_recombine_to_full_attention():
    # Partials built by the contract from key slices (some empty) of one attention merge to the whole.
    torch.manual_seed(3)
    b, h, lq, s, d = 1, 2, 3, 40, 32
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, s, d), torch.randn(b, h, s, d)
    scores = q @ k.transpose(-1, -2) / d ** 0.5
    bounds = [0, 0, 7, 7, 25, 40]  # 5 slices, two empty
    po, plse = [], []
    for lo, hi in zip(bounds, bounds[1:]):
        if lo == hi:
            po.append(torch.zeros(b, h, lq, d))
            plse.append(torch.full((b, h, lq), -torch.inf))
            continue
        sl = scores[..., lo:hi]
        po.append(torch.softmax(sl, -1) @ v[..., lo:hi, :])
        plse.append(torch.logsumexp(sl, -1))
    out = run(torch.stack(po), torch.stack(plse))
    torch.testing.assert_close(out, torch.softmax(scores, -1) @ v, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_output_dtype_and_strided_out(dtype):
    po, plse = partials(5, 2, 3, 4, 64)
    buf = torch.full((2, 4, 3, 64), float("nan"), dtype=dtype)
    out = buf.transpose(1, 2)  # (B, H, L, D) view of a (B, L, H, D) buffer
    combine(po, plse, out)
    assert check(out, direct(po, plse), "float16" if dtype == torch.float16 else "bfloat16").passed


def test_planted_combine_ignoring_lse_is_rejected():
    # A combine that averages the split outputs: the comparison used above must reject it.
    po, plse = partials(4, 2, 3, 4, 64)
    planted = po.mean(0)
    assert check(run(po, plse).half(), direct(po, plse), "float16").passed
    assert not check(planted.half(), direct(po, plse), "float16").passed


@pytest.mark.parametrize("shapes, match", [
    (((2, 1, 2, 3, 16), (2, 1, 2, 3), (1, 2, 4, 16)), "combine needs"),
    (((2, 1, 2, 3, 16), (2, 1, 2), (1, 2, 3, 16)), "combine needs"),
    (((1, 2, 3, 16), (1, 2, 3), (1, 2, 3, 16)), "combine needs"),
], ids=["out-shape", "lse-shape", "4d-partials"])
def test_bad_partials_raise_typed_errors(shapes, match):
    po, plse, out = (torch.zeros(s) for s in shapes)
    with pytest.raises(KernelInputError, match=match):
        combine(po, plse, out)


def test_non_fp32_partials_are_refused():
    with pytest.raises(KernelInputError, match="float32"):
        combine(torch.zeros(2, 1, 1, 1, 16, dtype=torch.float16), torch.zeros(2, 1, 1, 1), torch.zeros(1, 1, 1, 16))
