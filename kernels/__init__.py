"""FlashCore's kernels: one folder per kernel family (JIT code, launcher, reference, search space and rules, extra
trial steps, and ``family.py``, the declaration that registers it; README.md here is the recipe for a new one), and
the backends (PyTorch SDPA, FlashAttention-4) that compete with them as candidates.

Importing this package registers the families (their declarations import neither torch nor Triton) and imports
neither Triton nor the kernels; ``KernelFamily.launch()`` does, on first use.
"""

from ._errors import (KernelCompileError, KernelError, KernelInputError, KernelLaunchError,
                      KernelResourceError)
from ._family import (FAMILIES, FAMILY_FOLDERS, KernelFamily, default_families, default_family, families,
                      families_of_dtype, get_family, load_builtin, load_space, register, register_folder, unregister)
from ._hash import jit_hash
from ._hooks import GateResult, TrialHooks
from .interpreter import ensure_backend

load_builtin()  # the package's own families, in FAMILY_FOLDERS order, before the backends
from . import backends, interpreter  # noqa: E402,F401  (registers PyTorch's SDPA backends, and FA4 where installed)

__all__ = [
    "FAMILIES", "FAMILY_FOLDERS", "GateResult", "KernelFamily", "KernelError", "KernelInputError",
    "KernelCompileError", "KernelLaunchError", "KernelResourceError", "TrialHooks", "interpreter", "default_families",
    "default_family", "ensure_backend", "families", "families_of_dtype", "get_family", "jit_hash", "load_builtin",
    "load_space", "register", "register_folder", "unregister",
]
