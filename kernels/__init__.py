"""FlashCore's kernels: JIT code, launchers and PyTorch references, grouped into families (one folder each), and
the backends (PyTorch SDPA, FlashAttention-4) that compete with them as candidates.

Importing this package imports neither Triton nor the kernels; ``KernelFamily.launch()`` does, on first use.
"""

from ._errors import (KernelCompileError, KernelError, KernelInputError, KernelLaunchError,
                      KernelResourceError)
from ._family import FAMILIES, KernelFamily, ensure_backend, families, get_family, register
from ._hash import jit_hash
from . import backends  # noqa: E402,F401  (registers PyTorch's SDPA backends, and FA4 where installed)

__all__ = [
    "FAMILIES", "KernelFamily", "KernelError", "KernelInputError", "KernelCompileError",
    "KernelLaunchError", "KernelResourceError", "ensure_backend", "families", "get_family", "jit_hash", "register",
]
