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
    print the table; return how many problems are left: failures not dropped, rows of the cache that are not
    valid winners (each reported in one line and skipped) and shipped tables that cannot be read."""
    import json

    from flashcore.cache import CacheStore, TableError, parse_table

    from ..core.profiles import device_identity
    from ..runtime.dispatch import clear_cache
    from ..runtime.index import shipped_tables
    from ..tuning.validate import validate_winners
    from ..tuning.worker import default_timeout
    from .rows import read_winners

    profile = resolve_profile(gpu)
    select_backend(profile)
    timeout_s = default_timeout(profile)
    path = resolve_db(db)
    if not path.exists() and not shipped:
        raise AutotuneError(f"no cache at {path} (run `autotune sweep` first, or pass --db)")
    results: list[tuple[str, object]] = []
    log = make_console(stderr=True)
    unreadable: list[str] = []

    def skipped(line: str) -> None:
        unreadable.append(line)
        log.print(f"  {line}", markup=False, highlight=False)

    def said(source: str, store_path: Path | None = None):  # one line per verdict as it comes: a run cut short
        def on_result(r) -> None:                             # still leaves its record
            if drop and store_path is not None and not r.passed:
                with CacheStore.open(store_path) as store:
                    r.dropped = store.delete_winner(r.entry.key)
            log.print(f"  {source} {r.entry.key.kernel} {r.point.label}: "
                      f"{'pass' if r.passed else f'FAIL ({r.status}) {escape(r.reason)}'}", highlight=False)
        return on_result

    if path.exists():
        entries, problems = read_winners(path)
        for line in problems:
            skipped(line)
        results += [(str(path), r) for r in validate_winners(None, profile, timeout_s=timeout_s, entries=entries,
                                                             on_result=said(str(path), path))]
    if shipped:
        for name, text in shipped_tables():
            try:
                entries = parse_table(json.loads(text))
            except (TableError, ValueError, RecursionError) as exc:
                skipped(f"shipped {name} skipped: {str(exc)[:200]}")
                continue
            results += [(f"shipped {name}", r) for r in validate_winners(
                None, profile, timeout_s=timeout_s, entries=entries, on_result=said(f"shipped {name}"))]
    clear_cache()
    failed = [r for _, r in results if not r.passed]
    table = Table(title=f"{len(results)} served winners on {device_identity(profile)[0]}"
                        + ("" if shipped else " (the cache only: --no-shipped)"))
    for col in ("source", "kernel", "point", "config", "gate", "reason", "action"):
        table.add_column(col, no_wrap=col == "point")
    for source, r in results:
        table.add_row(source, r.entry.key.kernel, r.point.label, escape(format_config(r.entry.config)),
                      "pass" if r.passed else f"FAIL ({r.status})", escape(r.reason),
                      "dropped" if r.dropped else "")
    out = make_console()
    out.print(table)
    if unreadable:
        make_console(stderr=True).print(f"{len(unreadable)} unreadable row(s) or table(s) skipped (listed above; "
                                        "not served, not validated)", highlight=False)
    if not failed:
        out.print(f"all {len(results)} served winners pass the gate")
    elif drop:
        out.print(f"{len(failed)} of {len(results)} winners failed and were dropped")
    else:
        make_console(stderr=True).print(f"{len(failed)} of {len(results)} winners fail the gate; "
                                        f"run with --drop to delete them")
    return sum(not r.dropped for r in failed) + len(unreadable)
