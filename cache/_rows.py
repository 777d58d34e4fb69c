"""Rows of the cache's tables: entries and trial records turned into rows, and rows read back into them.

Writing is plain: one dict of columns per row, inserted with plain SQL inside the caller's transaction. Reading
trusts nothing: a column of the wrong type or NULL, a text that is not UTF-8 (see :func:`_decode_text`) or a
config that is not a JSON object (a depth bomb included) refuses its row with a CacheError that names it, so
``CacheStore.winners`` can skip that one row and return the others.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sqlite_utils import Database

from ._errors import CacheError
from ._types import CacheKey, Entry, TrialRecord

_KEY_FIELDS = CacheKey.field_names()
_FIGURES = ("median_us", "p95_us", "p99_us", "tflops", "rel_err")
_BOOLS = ("causal", "lower_right")
_TEXTS = ("gpu", "compute_capability", "triton_version", "kernel", "kernel_hash", "dtype")
_SIZES = ("head_dim", "seq_len", "batch", "heads")  # positive
_OPTIONAL_SIZES = ("kv_heads", "kv_len")  # 0 means "as many as the queries"
assert set(_TEXTS + _SIZES + _OPTIONAL_SIZES + _BOOLS) == set(_KEY_FIELDS)


class _Undecodable(bytes):
    """A text value of the database that is not UTF-8 (the row it is in is refused, not the whole read)."""


def _decode_text(raw: bytes) -> str | _Undecodable:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _Undecodable(raw)


class _BadRow(ValueError):
    """One winner row cannot become an Entry (the message says which column and why)."""


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        return "<nested too deep to show>"
    return text if len(text) <= 40 else text[:37] + "..."


# -- writing -------------------------------------------------------------------------------------------------


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)


def _key_columns(key: CacheKey) -> dict[str, Any]:
    columns = key.as_dict()
    for name in _BOOLS:
        columns[name] = int(columns[name])
    return columns


def _winner_row(entry: Entry) -> dict[str, Any]:
    row: dict[str, Any] = {"key_id": entry.key.id, **_key_columns(entry.key), "config": _dumps(entry.config)}
    row.update({name: float(getattr(entry, name)) for name in _FIGURES})
    row["created_at"] = entry.created_at
    row["torch_version"] = entry.torch_version
    return row


def _trial_row(rec: TrialRecord) -> dict[str, Any]:
    row: dict[str, Any] = {"key_id": rec.key.id, **_key_columns(rec.key), "config": _dumps(rec.config)}
    for name in ("status", "reason", *_FIGURES, "max_abs_err", "study", "trial_number", "created_at",
                 "torch_version"):
        row[name] = getattr(rec, name)
    row["extra"] = _dumps(rec.extra)
    return row


def _insert(db: Database, table: str, row: dict[str, Any], replace: bool = False) -> int:
    """INSERT (OR REPLACE) one row with plain SQL and return its rowid.

    Plain ``db.execute`` joins the caller's open transaction on every sqlite-utils version, whereas the table
    helpers of sqlite-utils 3.x commit on their own (``with conn:``) and would break all-or-nothing writes.
    Table and column names come from this package, never from data.
    """
    columns = ", ".join(f"[{name}]" for name in row)
    marks = ", ".join("?" for _ in row)
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    cursor = db.execute(f"{verb} INTO [{table}] ({columns}) VALUES ({marks})", list(row.values()))
    return int(cursor.lastrowid or 0)


# -- reading -------------------------------------------------------------------------------------------------


def _loads(text: str, what: str, where: str) -> dict[str, Any]:
    """The JSON object ``text`` (``what`` of the cache ``where``); CacheError when it is anything else."""
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except (TypeError, ValueError, RecursionError):  # RecursionError: a JSON depth bomb
        value = None
    if not isinstance(value, dict):
        raise CacheError(f"{where} is damaged ({what} is not a JSON object)")
    return value


def _row_key(row: dict[str, Any]) -> CacheKey:
    """The key of a row; _BadRow naming the first column of the wrong type (text where a number belongs, a
    NULL, a float, a non-UTF-8 text...) or out of range."""
    values: dict[str, Any] = {}
    for name in _KEY_FIELDS:
        value = row.get(name)
        if name in _TEXTS:
            ok = isinstance(value, str) and not isinstance(value, _Undecodable)
        elif name in _BOOLS:
            ok = type(value) is int and value in (0, 1)
            value = bool(value) if ok else value
        else:
            ok = type(value) is int and value >= (1 if name in _SIZES else 0)
        if not ok:
            raise _BadRow(f"{name} is {_show(value)}")
        values[name] = value
    return CacheKey(**values)


def _row_entry(row: dict[str, Any], where: str) -> Entry:
    """The entry of a winner row of the cache ``where``; CacheError naming the row when a column is not what the
    schema says."""
    try:
        key = _row_key(row)
        figures = {}
        for name in _FIGURES:
            value = row.get(name)
            if type(value) not in (int, float) or math.isnan(value):
                raise _BadRow(f"{name} is {_show(value)}")
            figures[name] = float(value)
        texts = {}
        for name in ("created_at", "torch_version"):
            value = row.get(name)
            if not isinstance(value, str) or isinstance(value, _Undecodable):
                raise _BadRow(f"{name} is {_show(value)}")
            texts[name] = value
    except _BadRow as exc:
        raise CacheError(f"{where} is damaged (winner {_show(row.get('key_id'))}: {exc})") from None
    config = _loads(row.get("config"), f"the config of winner {_show(row.get('key_id'))}", where)
    return Entry(key=key, config=config, **figures, **texts)


def _row_trial(row: dict[str, Any], where: str) -> TrialRecord:
    """The trial record of a trial row of the cache ``where``; CacheError naming the row when its key or JSON
    columns are damaged."""
    what = f"trial {row['id']}"
    try:
        key = _row_key(row)
    except _BadRow as exc:
        raise CacheError(f"{where} is damaged ({what}: {exc})") from None
    return TrialRecord(
        key=key, config=_loads(row["config"], f"the config of {what}", where),
        status=row["status"], reason=row["reason"],
        median_us=row["median_us"], p95_us=row["p95_us"], p99_us=row["p99_us"], tflops=row["tflops"],
        rel_err=row["rel_err"], max_abs_err=row["max_abs_err"], study=row["study"],
        trial_number=row["trial_number"], created_at=row["created_at"],
        extra=_loads(row["extra"], f"the extra of {what}", where), torch_version=row["torch_version"],
    )  # fmt: skip
