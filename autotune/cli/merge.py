"""`autotune merge`: combine the caches of several hosts and print what came from where."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .console import console as make_console


def run_merge(inputs: list[Path], output: Path, overwrite: bool) -> None:
    """Merge ``inputs`` into ``output`` (see ``cache.merge_caches``) and print a summary table on stdout."""
    from flashcore.cache import merge_caches

    report = merge_caches(inputs, output, overwrite=overwrite)
    table = Table(title=f"merged {len(report.inputs)} caches into {report.output}")
    for col in ("input", "schema", "winners", "trials", "winners kept", "trials added"):
        table.add_column(col, justify="left" if col == "input" else "right", overflow="fold")
    for item in report.inputs:
        table.add_row(str(item.path), str(item.schema_version), str(item.winners), str(item.trials),
                      str(item.winners_kept), str(item.trials_added))
    table.add_section()
    table.add_row(f"result: {report.output}", "", str(report.winners), str(report.trials),
                  str(report.winners), str(report.trials))
    out = make_console()
    out.print(table)
    out.print(f"{report.winners} winners (the fastest per key) and {report.trials} trials written to "
              f"{report.output}; {report.duplicate_trials} duplicate trials skipped (the same trial read from "
              "several inputs)")
