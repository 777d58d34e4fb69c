"""The command line's `--dtype` and `--fp8-tol`: which dtype label a sweep or bench keys its points by, and which
kernel family runs them.

FP8's error budget is part of the dtype label (``cache.fp8_dtype``: "fp8" for the default budget 0.1,
"fp8-tol0.03" for 0.03), so winners under different budgets are different cache keys. ``--dtype fp8 --fp8-tol
0.03`` and ``--dtype fp8-tol0.03`` are the same thing (the second is what `sweep --devices` passes its workers).
"""

from __future__ import annotations

import math

from ._errors import AutotuneError

FP8_FAMILY = "attention_fp8"
FP16_FAMILY = "attention_fwd"


def parse_fp8_tol(text: str) -> float:
    """``--fp8-tol`` as a float in (0, 1]; AutotuneError (one line) otherwise."""
    try:
        tol = float(str(text).strip())
    except ValueError:
        tol = float("nan")
    if not math.isfinite(tol) or not 0 < tol <= 1:
        raise AutotuneError(f"--fp8-tol must be a number in (0, 1] (the relative L2 error allowed against the "
                            f"fp32 reference); got {text!r}")
    return tol


def resolve_dtype(dtype: str, fp8_tol: str | None = None, kernel: str = FP16_FAMILY) -> tuple[str, str]:
    """(dtype label, kernel family name) for the options ``--dtype``, ``--fp8-tol`` and ``--kernel``.

    An FP8 dtype with the default kernel selects the FP8 family; a family that does not take the dtype, or
    ``--fp8-tol`` without FP8, is an AutotuneError.
    """
    from cache import base_dtype, fp8_dtype
    from kernels import get_family

    try:
        base = base_dtype(dtype)
    except ValueError as exc:
        raise AutotuneError(str(exc)) from None
    if fp8_tol is not None:
        if base != "fp8":
            raise AutotuneError(f"--fp8-tol is the error budget of --dtype fp8; got --dtype {dtype}")
        if dtype != "fp8":
            raise AutotuneError(f"--dtype {dtype} already names an error budget; give it once (--dtype fp8 "
                                f"--fp8-tol X)")
        dtype = fp8_dtype(parse_fp8_tol(fp8_tol))
    if base == "fp8" and kernel == FP16_FAMILY:
        kernel = FP8_FAMILY
    family = get_family(kernel)
    if base not in family.dtypes:
        raise AutotuneError(f"kernel {kernel} takes --dtype {' or '.join(family.dtypes)}; got {dtype}")
    return dtype, kernel
