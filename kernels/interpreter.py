"""The one switch between compiled kernels and Triton's CPU interpreter (the TRITON_INTERPRET variable).

Triton reads the variable when a kernel is decorated, so it must be chosen before the first kernel module is
imported. Everything in FlashCore that reads or sets it goes through here: the tuning machinery
(:func:`ensure_backend`), the command line (:func:`select`), the trial worker (:func:`apply`), the Gluon CPU
compiler (:func:`suspended`) and the launchers (:func:`interpreting`). Model code's get_kernel and attention never
set it: they leave it as the user did.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "TRITON_INTERPRET"


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET set, and not to "0")."""
    return os.environ.get(ENV, "0") not in ("", "0")


def value() -> str | None:
    """The variable as it is (None: unset): what a worker process is started with."""
    return os.environ.get(ENV)


def apply(setting: str | None) -> None:
    """Set the variable to ``setting`` (None: unset), in a fresh process before any kernel is decorated."""
    if setting is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = setting


def ensure_backend() -> None:
    """Pick Triton's interpreter when there is no GPU, before any kernel is decorated (the variable, if set, is
    kept). Called by the command line and the tuning machinery, never by what model code runs; importing this
    package has no such side effect."""
    if ENV in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ[ENV] = "1"


def jit_modules() -> tuple[str, ...]:
    """The modules whose import decorates a registered family's Triton / Gluon kernels (its ``jit`` files)."""
    from ._family import _PACKAGE, families

    names = {spec.partition(":")[0].removesuffix(".py").replace("/", ".")
             for family in families("triton") for spec in (*family.jit, *family.gqa_jit)}
    return tuple(sorted(f"{_PACKAGE}.{name}" for name in names if not name.startswith(".")))


def select(interpret: bool) -> str | None:
    """Switch to the interpreter (``interpret``) or make sure it is off; the reason it cannot be, or None.
    Turning it on fails once a kernel module was imported compiled; turning it off is the user's to do."""
    if interpret and not interpreting():
        if any(m in sys.modules for m in jit_modules()):
            return ("Triton's interpreter is needed, but kernels were already compiled in this process; set "
                    f"{ENV}=1 before importing them")
        os.environ[ENV] = "1"
    elif not interpret and interpreting():
        return f"compiled kernels are needed, but {ENV} is set; unset it"
    return None


@contextmanager
def suspended() -> Iterator[None]:
    """The variable unset for the duration (a helper process started inside sees no interpreter)."""
    saved = os.environ.pop(ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[ENV] = saved
