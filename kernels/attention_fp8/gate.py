"""The FP8 correctness gate: an error budget against the unquantized truth, and no error beyond the recipe's own.

FP8 outputs cannot meet the 16-bit gate (autotune/tuning/gate.py): quantizing the inputs alone costs a few percent
of relative L2 error (/work/shared/anchors/README.md). So an FP8 trial passes when
1. every element is written and finite;
2. its relative L2 error against the fp32 reference of the UNQUANTIZED inputs is at most ``tol`` (default 0.1;
   the sweep's ``--fp8-tol``, carried in the point's dtype label, ``cache.fp8_dtype``): the error budget that
   decides which recipes may win;
3. its relative L2 error is at most ``EMULATION_FACTOR`` (1.5) times the error of the PyTorch emulation of the
   same recipe and tiles (reference.py beside this file): quantization error belongs to the recipe, and a
   kernel that adds its own (a scale not applied, a wrong mask, a lossy accumulation) is caught even inside the
   budget.
It also reports the cosine similarity and the RMSE relative to RMS(V) (the form FA3 reports), which do not gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flashcore.cache import DEFAULT_FP8_TOL

from .._hooks import GateResult

EMULATION_FACTOR = 1.5
# Below this the emulation's error is output rounding (bf16 keeps 8 bits), not quantization: the factor is
# applied to at least this much, so an exactly emulated kernel is not failed by its final 16-bit cast.
EMULATION_FLOOR = 8e-3


@dataclass(frozen=True)
class Fp8Report:
    """The gate's verdict plus the FP8 error figures (relative L2 of the kernel and of the emulation, both
    against the fp32 reference of the unquantized inputs; cosine similarity; RMSE / RMS(V))."""

    gate: GateResult
    emulated_rel_err: float
    cosine: float
    rmse_over_rms_v: float | None

    @property
    def passed(self) -> bool:
        return self.gate.passed


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    """‖x - ref‖₂ / ‖ref‖₂ in fp32."""
    return float(torch.linalg.vector_norm(x.float() - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def cosine(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors."""
    a, b = x.float().flatten(), ref.float().flatten()
    return float(torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)).clamp_min(1e-30))


def check_fp8(out: torch.Tensor, ref_fp32: torch.Tensor, emulated: torch.Tensor, tol: float = DEFAULT_FP8_TOL,
              v: torch.Tensor | None = None) -> GateResult:
    """Gate an FP8 kernel's ``out`` (see the module docstring); ``report_fp8`` gives the figures too."""
    return report_fp8(out, ref_fp32, emulated, tol, v).gate


def report_fp8(out: torch.Tensor, ref_fp32: torch.Tensor, emulated: torch.Tensor, tol: float = DEFAULT_FP8_TOL,
               v: torch.Tensor | None = None) -> Fp8Report:
    """The gate's verdict with the figures: ``v`` (the unquantized values) gives RMSE / RMS(V)."""
    if tuple(out.shape) != tuple(ref_fp32.shape) or tuple(emulated.shape) != tuple(ref_fp32.shape):
        gate = GateResult(False, f"shape {tuple(out.shape)} (emulation {tuple(emulated.shape)}) != reference "
                          f"{tuple(ref_fp32.shape)}", float("inf"), float("inf"), -1)
        return Fp8Report(gate, float("inf"), float("nan"), None)
    o = out.float()
    emu_err = rel_l2(emulated, ref_fp32)
    bad = int((~torch.isfinite(o)).sum())
    if bad:
        gate = GateResult(False, f"{bad} of {o.numel()} elements are NaN/inf or never written",
                          float("inf"), float("inf"), bad)
        return Fp8Report(gate, emu_err, float("nan"), None)
    diff = o - ref_fp32
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    err = rel_l2(o, ref_fp32)
    cos = cosine(o, ref_fp32)
    rmse_v = None
    if v is not None:
        rmse_v = float(diff.pow(2).mean().sqrt() / v.float().pow(2).mean().sqrt().clamp_min(1e-30))
    limit = EMULATION_FACTOR * max(emu_err, EMULATION_FLOOR)
    reason = ""
    if err > tol:
        reason = f"relative L2 error {err:.3g} > FP8 budget {tol:g} (emulation of the recipe: {emu_err:.3g})"
    elif err > limit:
        reason = (f"relative L2 error {err:.3g} > {EMULATION_FACTOR:g}x the emulation's {emu_err:.3g}: "
                  f"the kernel adds error of its own")
    gate = GateResult(not reason, reason, max_abs, err, 0)
    return Fp8Report(gate, emu_err, cos, rmse_v)
