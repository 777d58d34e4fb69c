"""Named validity rules of the FP8 recipes (kernels/attention_fp8/quant.py; the config keys FP8_QK, FP8_PV,
Q_SCALE, K_SCALE, V_SCALE, SMOOTH_K, P_SCALE), listed by space.toml beside this file next to the tile rules of
``search_spaces.rules``. Registered by name on import (the family's declaration names this module)."""

from __future__ import annotations

from flashcore.search_spaces.rules import is_fp8, rule

# Relative L2 error of FP8 attention with both matmuls in E4M3 on the sweep's inputs (autotune/tuning/inputs.py), in the
# PyTorch emulation: at least 3.6% (mostly 4% to 7%) for every Q/K scaling and smoothing of the space, at S 17
# to 8192 and D 16 to 128 (S = 1 aside, where the logits do not matter); tests/test_fp8_sweep.py checks the
# floor. A budget below it can only be met with Q and K in 16 bits (2.3% to 3.1% there).
QK_FP8_ERROR_FLOOR = 0.035


@rule
def fp8_recipe_canonical(config, point, profile):
    """Recipe fields that the recipe ignores (Q/K scales and SMOOTH_K without FP8_QK, V scale and P_SCALE
    without FP8_PV) stay at their defaults: other values launch the same kernel on the same inputs."""
    from .quant import Recipe

    try:
        recipe = Recipe.from_config(config)
    except ValueError as exc:
        return str(exc)
    if recipe.canonical() != recipe:
        return f"recipe fields ignored by {recipe.label} must keep their defaults (the same kernel is tried once)"
    return None


@rule
def fp8_recipe_within_budget(config, point, profile):
    """E4M3 Q·Kᵀ and P·V together cannot meet an error budget below QK_FP8_ERROR_FLOOR (the budget is in the
    point's dtype, "fp8-tol<budget>"): such recipes would only fail the gate."""
    if not is_fp8(point) or not config.get("FP8_QK", True) or not config.get("FP8_PV", True):
        return None
    from flashcore.cache import fp8_tol

    tol = fp8_tol(point.dtype)
    if tol is not None and tol < QK_FP8_ERROR_FLOOR:
        return (f"E4M3 Q·Kᵀ and P·V cost at least {QK_FP8_ERROR_FLOOR:g} relative L2 error, over the budget "
                f"{tol:g}")
    return None


@rule
def fp8_pv16_needs_qk16(config, point, profile):
    """A 16-bit P·V only pays when Q·Kᵀ is 16-bit too: behind an E4M3 Q·Kᵀ most of the error is Q's and K's (on
    the sweep's inputs at S 1024, D 64: 6.8% with a 16-bit P·V against 7.3% with both in E4M3), and the 16-bit
    P·V costs time."""
    if is_fp8(point) and config.get("FP8_QK", True) and config.get("FP8_PV", True) is False:
        return "FP8_PV=false needs FP8_QK=false (behind an E4M3 Q·Kᵀ it costs time and saves no error)"
    return None
