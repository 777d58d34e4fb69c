"""FlashCore: tuned FlashAttention-style kernels for NVIDIA GPUs, served from a persistent config cache.

The repository's top-level folders are this package's subpackages (``pyproject.toml`` maps them):
``flashcore.autotune`` (run time, tuning, evaluation, command line), ``flashcore.kernels`` (kernel families),
``flashcore.search_spaces`` (what may be tried) and ``flashcore.cache`` (what was learned). Model code needs
only ``from flashcore.autotune import get_kernel, attention``. Importing this package imports nothing else.
"""

__version__ = "0.2.0"
