"""`autotune validate`: gate every served winner again, print a verdict per entry, optionally drop failures."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from .backend import select_backend
from .console import console as make_console
from ..core.errors import AutotuneError
from ..core.problem import format_config
from ..runtime.paths import resolve_db
from ..core.profiles import resolve_profile


def run_validate(*, db: Path | None, gpu: str, drop: bool, shipped: bool = True) -> int:
    """Validate the winners of ``db`` (and of the shipped tables, with ``shipped``) served on profile ``gpu``;
    print the table; return how many failed."""
    import json

    from flashcore.cache import CacheStore, parse_table

    from ..core.profiles import device_identity
    from ..runtime.dispatch import clear_cache
    from ..runtime.index import shipped_tables
    from ..tuning.validate import validate_winners
    from ..tuning.worker import default_timeout

    profile = resolve_profile(gpu)
    select_backend(profile)
    timeout_s = default_timeout(profile)
    path = resolve_db(db)
    if not path.exists() and not shipped:
        raise AutotuneError(f"no cache at {path} (run `autotune sweep` first, or pass --db)")
    results: list[tuple[str, object]] = []
    log = make_console(stderr=True)

    def said(source: str):  # one line per verdict as it comes: a run cut short still leaves its record
        def on_result(r) -> None:
            log.print(f"  {source} {r.entry.key.kernel} {r.point.label}: "
                      f"{'pass' if r.passed else f'FAIL ({r.status}) {escape(r.reason)}'}", highlight=False)
        return on_result

    if path.exists():
        with CacheStore.open(path) as store:
            results += [(str(path), r) for r in validate_winners(store, profile, drop=drop, timeout_s=timeout_s,
                                                                 on_result=said(str(path)))]
    if shipped:
        for name, text in shipped_tables():
            entries = parse_table(json.loads(text))
            results += [(f"shipped {name}", r) for r in validate_winners(
                None, profile, timeout_s=timeout_s, entries=entries, on_result=said(f"shipped {name}"))]
    clear_cache()
    failed = [r for _, r in results if not r.passed]
    table = Table(title=f"{len(results)} served winners on {device_identity(profile)[0]}")
    for col in ("source", "kernel", "point", "config", "gate", "reason", "action"):
        table.add_column(col)
    for source, r in results:
        table.add_row(source, r.entry.key.kernel, r.point.label, escape(format_config(r.entry.config)),
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
