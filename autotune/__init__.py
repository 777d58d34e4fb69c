"""FlashCore autotune: tune attention kernels per problem point, serve the fastest correct candidate at run time.

``from flashcore.autotune import get_kernel, attention`` is all model code needs; it imports neither Optuna, typer,
rich nor the tuning machinery (``flashcore.autotune.tuning``), which load only when one of their names below is
asked for.
"""

from .core.errors import AutotuneError

__all__ = [
    "AutotuneError", "GRIDS", "GateResult", "GpuProfile", "PROFILES", "Point", "SweepOptions", "TOLERANCES",
    "Tolerance", "TunedKernel", "UnsupportedAttention", "attention", "check", "clear_cache", "get_grid",
    "get_kernel", "resolve_profile", "sweep", "tune_point",
]

# name -> module (relative to this package) that defines it, imported on first use (so that the command line's
# --help imports no torch, and model code pays only for what it asks for)
_LAZY = {
    "get_kernel": "runtime.dispatch", "TunedKernel": "runtime.dispatch", "clear_cache": "runtime.dispatch",
    "Point": "core.problem", "PROFILES": "core.profiles", "GpuProfile": "core.profiles",
    "resolve_profile": "core.profiles",
    "attention": "runtime.op", "UnsupportedAttention": "runtime.op",  # registers torch.ops.flashcore.attention
    "sweep": "tuning.sweep", "tune_point": "tuning.sweep", "SweepOptions": "tuning.options",
    "GRIDS": "tuning.grids", "get_grid": "tuning.grids",
    "TOLERANCES": "tuning.gate", "GateResult": "tuning.gate", "Tolerance": "tuning.gate", "check": "tuning.gate",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flashcore.autotune' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
