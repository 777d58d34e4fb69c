"""Choose between compiled kernels and Triton's CPU interpreter before any kernel is decorated."""

from __future__ import annotations

from flashcore.kernels import interpreter

from ..core.errors import AutotuneError


def select_backend(profile) -> None:
    """Set Triton's interpreter for ``profile`` (cpu: on; GPU: must be off; ``kernels.interpreter``), or say why
    it cannot be."""
    why = interpreter.select(profile.interpreter)
    if why:
        raise AutotuneError(f"--gpu {profile.name}: {why}")
