"""Choose between compiled kernels and Triton's CPU interpreter before any kernel is decorated."""

from __future__ import annotations

import os
import sys

from ..core.errors import AutotuneError

# the modules whose import decorates Triton / Gluon kernels (compiled, or interpreted, from then on)
_JIT_MODULES = tuple(f"flashcore.kernels.{name}" for name in (
    "attention_fwd.kernel", "attention_kv.kernel", "attention_fp8.kernel", "attention_fp8.quant_fused",
    "attention_gluon.kernel"))


def select_backend(profile) -> None:
    """Set TRITON_INTERPRET for ``profile`` (cpu: on; GPU: must be off), or say why it cannot be."""
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if profile.interpreter and not interpreting:
        if any(m in sys.modules for m in _JIT_MODULES):
            raise AutotuneError("the cpu profile needs Triton's interpreter, but kernels were already compiled "
                                "in this process; set TRITON_INTERPRET=1 before importing them")
        os.environ["TRITON_INTERPRET"] = "1"
    elif not profile.interpreter and interpreting:
        raise AutotuneError(f"--gpu {profile.name} tunes compiled kernels, but TRITON_INTERPRET is set; unset it")
