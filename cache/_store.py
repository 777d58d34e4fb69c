"""The SQLite cache of winners and trials, through sqlite-utils.

One file per machine (or shared over a filesystem) used by several processes at once: WAL journal, a 30 s
busy timeout, every compare-and-write in one ``BEGIN IMMEDIATE`` transaction, and a few retries with backoff
when the database stays locked. Opening never modifies a file that is not a FlashCore cache.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sqlite_utils import Database

from ._errors import CacheError
from ._migrations import detect_version, migrate
from ._tables import check_entries
from ._types import TRIAL_STATUSES, CacheKey, Entry, TrialRecord

T = TypeVar("T")
_KEY_FIELDS = CacheKey.field_names()
_FIGURES = ("median_us", "p95_us", "p99_us", "tflops", "rel_err")
_WINNER_ORDER = "gpu, kernel, dtype, causal, head_dim, seq_len, kv_len, batch, heads, kv_heads, key_id"
_BOOLS = ("causal", "lower_right")


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
    Table and column names come from this module, never from data.
    """
    columns = ", ".join(f"[{name}]" for name in row)
    marks = ", ".join("?" for _ in row)
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    cursor = db.execute(f"{verb} INTO [{table}] ({columns}) VALUES ({marks})", list(row.values()))
    return int(cursor.lastrowid or 0)


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _describe(where: str, exc: sqlite3.Error) -> str:
    text = str(exc)
    lowered = text.lower()
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return f"{where} is not a FlashCore cache ({text})"
    if isinstance(exc, sqlite3.OperationalError) and _is_locked(exc):
        return f"{where} stayed locked by another process ({text})"
    return f"{where}: {text}"


class CacheStore:
    """Winners (the best config per key) and trials (every attempt) in one SQLite database."""

    RETRIES = 5  # attempts of one operation while the database stays locked
    BACKOFF_S = 0.05  # first wait between attempts; doubles, with jitter

    def __init__(self, db: Database, path: Path | None) -> None:
        """Wrap an already opened and migrated database; use :meth:`open` or :meth:`memory` instead."""
        self._db: Database | None = db
        self._path = path
        self._where = str(path) if path is not None else "<memory cache>"

    # -- opening -------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, busy_timeout_ms: int = 30000,
             make_parents: bool = False) -> CacheStore:
        """Open (creating it if needed) the cache at ``path`` and migrate it to SCHEMA_VERSION.

        Its folder must exist (CacheError otherwise: a mistyped path never creates folders) unless
        ``make_parents`` (for the default location in the user's cache directory). Raises CacheError, without
        touching the file, when it is not SQLite, is corrupted, is some other program's database, or was
        written by a newer FlashCore.
        """
        p = Path(path).expanduser()
        where = str(p)
        if p.is_dir():
            raise CacheError(f"{where} is a directory, not a FlashCore cache")
        if make_parents:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheError(f"cannot create the folder {p.parent} for {where} ({exc.strerror or exc})") from None
        elif not p.parent.is_dir():
            raise CacheError(f"the folder {p.parent} of {where} does not exist")
        try:
            conn = sqlite3.connect(str(p), isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot open {where} ({getattr(exc, 'strerror', None) or exc})") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            db = Database(conn, execute_plugins=False)
            store = cls(db, p)

            def prepare() -> None:
                problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(1)").fetchall()] or ["?"]
                if problems != ["ok"]:
                    raise CacheError(f"{where} is not a FlashCore cache (corrupted: {problems[0]})")
                detect_version(db, where)  # read only: refuses foreign or newer files before any write
                conn.execute("PRAGMA journal_mode = WAL")
                migrate(db, where)

            store._retry(prepare)
        except sqlite3.Error as exc:
            conn.close()
            raise CacheError(_describe(where, exc)) from None
        except BaseException:
            conn.close()
            raise
        return store

    @classmethod
    def memory(cls) -> CacheStore:
        """A fresh in-memory cache (for tests); it vanishes on close."""
        conn = sqlite3.connect(":memory:", isolation_level=None)
        db = Database(conn, execute_plugins=False)
        migrate(db, "<memory cache>")
        return cls(db, None)

    @property
    def path(self) -> Path | None:
        """The database file, or None for an in-memory cache."""
        return self._path

    @property
    def schema_version(self) -> int:
        """The schema version of the open database (SCHEMA_VERSION once opened)."""
        return self._retry(lambda: detect_version(self._conn_db(), self._where))

    def close(self) -> None:
        """Close the database; further calls raise CacheError. Closing twice is fine."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> CacheStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CacheStore({self._where!r})"

    # -- plumbing ------------------------------------------------------------------------------------------

    def _conn_db(self) -> Database:
        if self._db is None:
            raise CacheError(f"{self._where}: the cache is closed")
        return self._db

    def _retry(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt``, retrying with backoff while the database is locked; sqlite errors become CacheError."""
        for number in range(1, self.RETRIES + 1):
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if _is_locked(exc) and number < self.RETRIES:
                    time.sleep(self.BACKOFF_S * 2 ** (number - 1) * random.uniform(1.0, 1.5))
                    continue
                raise CacheError(_describe(self._where, exc)) from None
            except sqlite3.DatabaseError as exc:
                raise CacheError(_describe(self._where, exc)) from None
        raise AssertionError("unreachable")

    def _write(self, body: Callable[[Database], T]) -> T:
        """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction (all or nothing), retried while locked."""

        def attempt() -> T:
            db = self._conn_db()
            db.conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(db)
                db.conn.execute("COMMIT")
            except BaseException:
                if db.conn.in_transaction:
                    db.conn.execute("ROLLBACK")
                raise
            return result

        return self._retry(attempt)

    def _loads(self, text: str, what: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except (TypeError, ValueError):
            value = None
        if not isinstance(value, dict):
            raise CacheError(f"{self._where} is damaged ({what} is not a JSON object)")
        return value

    def _key(self, row: dict[str, Any]) -> CacheKey:
        values = {name: row[name] for name in _KEY_FIELDS}
        for name in _BOOLS:
            values[name] = bool(values[name])
        return CacheKey(**values)

    def _entry(self, row: dict[str, Any]) -> Entry:
        return Entry(
            key=self._key(row),
            config=self._loads(row["config"], f"the config of winner {row['key_id']}"),
            median_us=row["median_us"], p95_us=row["p95_us"], p99_us=row["p99_us"],
            tflops=row["tflops"], rel_err=row["rel_err"], created_at=row["created_at"],
            torch_version=row["torch_version"],
        )  # fmt: skip

    def _trial(self, row: dict[str, Any]) -> TrialRecord:
        what = f"trial {row['id']}"
        return TrialRecord(
            key=self._key(row), config=self._loads(row["config"], f"the config of {what}"),
            status=row["status"], reason=row["reason"],
            median_us=row["median_us"], p95_us=row["p95_us"], p99_us=row["p99_us"], tflops=row["tflops"],
            rel_err=row["rel_err"], max_abs_err=row["max_abs_err"], study=row["study"],
            trial_number=row["trial_number"], created_at=row["created_at"],
            extra=self._loads(row["extra"], f"the extra of {what}"), torch_version=row["torch_version"],
        )  # fmt: skip

    # -- winners -------------------------------------------------------------------------------------------

    @staticmethod
    def _put(db: Database, entry: Entry, only_if_faster: bool) -> bool:
        row = _winner_row(entry)
        if only_if_faster:
            found = db.execute("SELECT median_us FROM winners WHERE key_id = ?", [row["key_id"]]).fetchone()
            if found is not None and not row["median_us"] < found[0]:
                return False
        _insert(db, "winners", row, replace=True)
        return True

    def put_winner(self, entry: Entry) -> bool:
        """Store ``entry`` unless its key already has a winner at least as fast; return whether it was written.

        The entry is validated with the import rules first (TableError on a bad one).
        """
        check_entries([entry])
        return self._write(lambda db: self._put(db, entry, only_if_faster=True))

    def get_winner(self, key: CacheKey) -> Entry | None:
        """The winner stored for ``key``, or None."""

        def read() -> Entry | None:
            rows = list(self._conn_db().table("winners").rows_where("key_id = ?", [key.id]))
            return self._entry(rows[0]) if rows else None

        return self._retry(read)

    def winners(self, **filters: Any) -> list[Entry]:
        """All winners whose key fields equal the given filters (e.g. ``gpu=..., causal=True``), in a stable order."""
        unknown = sorted(set(filters) - set(_KEY_FIELDS))
        if unknown:
            raise TypeError(f"winners() got unknown filter {unknown[0]!r} (filters are {', '.join(_KEY_FIELDS)})")
        where = " AND ".join(f"[{name}] = ?" for name in filters) or None
        args = [int(v) if name in _BOOLS else v for name, v in filters.items()]

        def read() -> list[Entry]:
            rows = self._conn_db().table("winners").rows_where(where, args, order_by=_WINNER_ORDER)
            return [self._entry(row) for row in rows]

        return self._retry(read)

    def delete_winner(self, key: CacheKey) -> bool:
        """Delete the winner of ``key``; return whether there was one."""
        return self._write(lambda db: db.execute("DELETE FROM winners WHERE key_id = ?", [key.id]).rowcount > 0)

    def import_entries(self, entries: Iterable[Entry], replace: bool) -> int:
        """Import entries in ONE transaction (all or nothing); return how many were written.

        ``replace=True`` overwrites existing winners of the same keys; ``replace=False`` keeps an existing winner
        unless the imported entry is strictly faster (the :meth:`put_winner` rule). Every entry is validated
        first (TableError naming ``entries[i]``), so a bad one writes nothing.
        """
        batch = list(entries)
        check_entries(batch)
        return self._write(lambda db: sum(self._put(db, entry, only_if_faster=not replace) for entry in batch))

    # -- trials --------------------------------------------------------------------------------------------

    def add_trial(self, rec: TrialRecord) -> int:
        """Append one trial record; return its id."""
        if rec.status not in TRIAL_STATUSES:
            raise ValueError(f"trial status {rec.status!r} is not one of {', '.join(TRIAL_STATUSES)}")
        row = _trial_row(rec)
        return self._write(lambda db: _insert(db, "trials", row))

    def trials(self, key: CacheKey | None = None) -> list[TrialRecord]:
        """All trials (of ``key`` only, when given), oldest first."""

        def read() -> list[TrialRecord]:
            table = self._conn_db().table("trials")
            if key is None:
                rows = table.rows_where(order_by="id")
            else:
                rows = table.rows_where("key_id = ?", [key.id], order_by="id")
            return [self._trial(row) for row in rows]

        return self._retry(read)
