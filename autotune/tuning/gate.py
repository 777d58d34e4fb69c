"""The correctness gate: a trial's output against the fp32 reference, before it may be timed or win."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flashcore.kernels import GateResult  # the verdict every gate returns (a family's own gate too)


@dataclass(frozen=True)
class Tolerance:
    """Element-wise ``|out - ref| <= atol + rtol·|ref|`` everywhere, and ``‖out - ref‖₂ / ‖ref‖₂ <= rel_l2``."""

    atol: float
    rtol: float
    rel_l2: float


# fp16: the validation method FlashCore started from (torch.allclose(rtol=1e-3, atol=2e-3)). bf16 keeps 8 bits
# of mantissa against fp16's 11, so its output rounding alone is 8x larger: 8x the fp16 bounds, and torch's
# own bf16 rtol (1.6e-2).
TOLERANCES = {
    "float16": Tolerance(atol=2e-3, rtol=1e-3, rel_l2=2e-3),
    "bfloat16": Tolerance(atol=1.6e-2, rtol=1.6e-2, rel_l2=1.6e-2),
}


def check(out: torch.Tensor, ref: torch.Tensor, dtype: str, tol: Tolerance | None = None) -> GateResult:
    """Gate ``out`` (any dtype) against ``ref`` (fp32): every element written and finite, then close."""
    tol = tol or TOLERANCES[dtype]
    if tuple(out.shape) != tuple(ref.shape):
        return GateResult(False, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}", float("inf"), float("inf"), -1)
    o = out.float()
    finite = torch.isfinite(o)
    bad = int((~finite).sum())
    if bad:
        return GateResult(False, f"{bad} of {o.numel()} elements are NaN/inf or never written",
                          float("inf"), float("inf"), bad)
    diff = (o - ref).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    rel = float(torch.linalg.vector_norm(o - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))
    outside = diff > tol.atol + tol.rtol * ref.abs()
    mismatched = int(outside.sum())
    if mismatched:
        where = tuple(int(i) for i in torch.nonzero(outside)[0].tolist())
        return GateResult(False, f"{mismatched} elements outside atol={tol.atol:g} rtol={tol.rtol:g} "
                          f"(first at {where}; max abs err {max_abs:.3g})", max_abs, rel, mismatched)
    if rel > tol.rel_l2:
        return GateResult(False, f"relative L2 error {rel:.3g} > {tol.rel_l2:g}", max_abs, rel, 0)
    return GateResult(True, "", max_abs, rel, 0)
