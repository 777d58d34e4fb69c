"""`autotune validate`: gate every served winner again, print a verdict per entry, optionally drop failures."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ._backend import select_backend
from ._console import console as make_console
from ._errors import AutotuneError
from ._grids import format_config
from ._paths import resolve_db
from ._profiles import resolve_profile


def run_validate(*, db: Path | None, gpu: str, drop: bool) -> int:
    """Validate the winners of ``db`` served on profile ``gpu``; print the table; return how many failed."""
    from cache import CacheStore

    from ._dispatch import clear_cache
    from ._profiles import device_identity
    from ._validate import validate_winners
    from ._worker import default_timeout

    profile = resolve_profile(gpu)
    select_backend(profile)
    timeout_s = default_timeout(profile)
    path = resolve_db(db)
    if not path.exists():
        raise AutotuneError(f"no cache at {path} (run `autotune sweep` first, or pass --db)")
    with CacheStore.open(path) as store:
        results = validate_winners(store, profile, drop=drop, timeout_s=timeout_s)
    clear_cache()
    failed = [r for r in results if not r.passed]
    table = Table(title=f"{len(results)} served winners on {device_identity(profile)[0]} ({path})")
    for col in ("kernel", "point", "config", "gate", "reason", "action"):
        table.add_column(col)
    for r in results:
        table.add_row(r.entry.key.kernel, r.point.label, escape(format_config(r.entry.config)),
                      "pass" if r.passed else f"FAIL ({r.status})", escape(r.reason),
                      "dropped" if r.dropped else "")
    out = make_console()
    out.print(table)
    if not failed:
        out.print(f"all {len(results)} served winners pass the gate")
    elif drop:
        out.print(f"{len(failed)} of {len(results)} winners failed and were dropped")
    else:
        make_console(stderr=True).print(f"{len(failed)} of {len(results)} winners fail the gate; "
                                        f"run with --drop to delete them")
    return len(failed)
