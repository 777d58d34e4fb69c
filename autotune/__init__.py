"""FlashCore autotune: tune Triton attention kernels per problem point, serve the winners at run time.

``from autotune import get_kernel`` is all model code needs; it imports neither Optuna nor the CLI.
"""

from ._dispatch import TunedKernel, clear_cache, get_kernel
from ._errors import AutotuneError
from ._gate import TOLERANCES, GateResult, Tolerance, check
from ._grids import GRIDS, Point, get_grid
from ._profiles import PROFILES, GpuProfile, resolve_profile

__all__ = [
    "AutotuneError", "GRIDS", "GateResult", "GpuProfile", "PROFILES", "Point", "TOLERANCES", "Tolerance",
    "TunedKernel", "UnsupportedAttention", "attention", "check", "clear_cache", "get_grid", "get_kernel",
    "resolve_profile", "sweep", "tune_point",
]


def __getattr__(name: str):
    # The sweep machinery (and through it Optuna) loads only when asked for.
    if name in ("sweep", "tune_point"):
        from . import _sweep

        return getattr(_sweep, name)
    # The drop-in op registers torch.ops.flashcore.attention when first asked for.
    if name in ("attention", "UnsupportedAttention"):
        from . import _op

        return getattr(_op, name)
    raise AttributeError(f"module 'autotune' has no attribute {name!r}")
