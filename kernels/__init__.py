"""FlashCore's Triton kernels: JIT code, launchers and PyTorch references, grouped into families.

Importing this package imports neither Triton nor the kernels; ``KernelFamily.launch()`` does, on first use.
"""

from ._errors import (KernelCompileError, KernelError, KernelInputError, KernelLaunchError,
                      KernelResourceError)
from ._family import FAMILIES, KernelFamily, ensure_backend, get_family

__all__ = [
    "FAMILIES", "KernelFamily", "KernelError", "KernelInputError", "KernelCompileError",
    "KernelLaunchError", "KernelResourceError", "ensure_backend", "get_family",
]
