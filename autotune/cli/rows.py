"""The winners of a cache read one row at a time, for the commands that list or check them (`show`, `validate`,
`export`): a row that is not a valid winner (a dimension stored as text, a config that is not a JSON object or
is nested too deep to decode, a value out of range) is reported in one line and the others are read on.

Each row is checked with the rules of an imported table (``cache.parse_table``), the same rules every winner
passed when it was written.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

_BOOLS = ("causal", "lower_right")
_MAX_SHOWN = 60  # characters of a hostile key_id shown in a message


def read_winners(path: Path) -> tuple[list[Any], list[str]]:
    """(the valid winners of the cache at ``path``, one line per row that is not one).

    The file is checked and migrated by ``CacheStore.open`` first (CacheError for a file that is not a FlashCore
    cache); then every row of its winners table is read and validated on its own.
    """
    from flashcore.cache import CacheError, CacheStore

    entries: list[Any] = []
    problems: list[str] = []
    with CacheStore.open(path):
        try:
            with closing(sqlite3.connect(str(path), timeout=30)) as conn:
                conn.row_factory = sqlite3.Row
                rows = conn.execute("SELECT rowid AS _rowid, * FROM winners ORDER BY rowid").fetchall()
        except sqlite3.Error as exc:
            raise CacheError(f"cannot read the winners of {path} ({exc})") from None
    for row in rows:
        entry, problem = _entry(row)
        if entry is not None:
            entries.append(entry)
        else:
            problems.append(f"{path}: winner row {row['_rowid']} ({_short(row['key_id'])}) skipped: {problem}")
    return entries, problems


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _entry(row: sqlite3.Row) -> tuple[Any, str]:
    """(the Entry of one winners row, "") or (None, why it is not a valid winner)."""
    from flashcore.cache import TableError, parse_table

    item = {name: row[name] for name in row.keys() if name not in ("_rowid", "key_id", "config")}
    for name in _BOOLS:
        if item.get(name) in (0, 1) and not isinstance(item.get(name), float):
            item[name] = bool(item[name])
    for name, same_as in (("kv_heads", "heads"), ("kv_len", "seq_len")):
        if item.get(name) == 0:  # 0: as many as the queries (a migrated row)
            item[name] = item.get(same_as)
    try:
        item["config"] = json.loads(row["config"])
    except (TypeError, ValueError) as exc:
        return None, f"its config is not JSON ({str(exc)[:80]})"
    except RecursionError:
        return None, "its config is nested too deep to decode"
    try:
        (entry,) = parse_table({"format_version": 2, "entries": [item]})
    except TableError as exc:
        return None, str(exc).replace("entries[0].", "", 1).replace("entries[0]: ", "", 1)
    except RecursionError:
        return None, "its config is nested too deep to check"
    return entry, ""
