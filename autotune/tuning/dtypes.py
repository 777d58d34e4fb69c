"""The command line's `--dtype` and `--fp8-tol`: which dtype label a sweep or bench keys its points by, and which
kernel families run them (the registry's, by the dtypes each declares).

FP8's error budget is part of the dtype label (``cache.fp8_dtype``: "fp8" for the default budget 0.1,
"fp8-tol0.03" for 0.03), so winners under different budgets are different cache keys. ``--dtype fp8 --fp8-tol
0.03`` and ``--dtype fp8-tol0.03`` are the same thing (the second is what `sweep --devices` passes its workers).
"""

from __future__ import annotations

import math

from ..core.errors import AutotuneError


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


def resolve_dtype(dtype: str | None, fp8_tol: str | None = None,
                  kernel: str | None = None) -> tuple[str | None, tuple[str, ...] | None]:
    """(dtype label or None, candidate names or None) for the options ``--dtype``, ``--fp8-tol`` and ``--kernel``.

    ``dtype`` None keeps the grid's dtypes. ``kernel``: None or "auto" (every candidate), or names separated by
    commas. A dtype that only some of our families take (fp8) without ``--kernel`` selects those
    (``families_of_dtype``); an unknown name, a family that does not take the dtype, or ``--fp8-tol`` without
    FP8, is an AutotuneError.
    """
    from flashcore.cache import base_dtype, fp8_dtype
    from flashcore.kernels import families_of_dtype, get_family

    kernels = None if kernel in (None, "", "auto") else tuple(k.strip() for k in kernel.split(",") if k.strip())
    base = None
    if dtype is not None:
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
    if base == "fp8" and kernels is None:
        kernels = families_of_dtype(base)
    for name in kernels or ():
        try:
            family = get_family(name)
        except KeyError as exc:
            raise AutotuneError(str(exc.args[0])) from None
        if base is not None and base not in family.dtypes:
            raise AutotuneError(f"kernel {name} takes --dtype {' or '.join(family.dtypes)}; got {dtype}")
    return dtype, kernels
