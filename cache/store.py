"""The SQLite cache of winners and trials, through sqlite-utils.

One file per machine (or shared over a filesystem) used by several processes at once: WAL journal, a 30 s
busy timeout, every compare-and-write in one ``BEGIN IMMEDIATE`` transaction, and a few retries with backoff
when the database stays locked. Opening never modifies a file that is not a FlashCore cache, and opening
``readonly=True`` (what model code's lookups use) never modifies any file at all.

Reading winners never fails because of one bad row: a row whose columns have the wrong types, whose text is
not UTF-8 or whose config is not a JSON object (a depth bomb included) is skipped with one RuntimeWarning
naming it, and the other rows are returned. Rows are made and read back in ``cache/_rows.py``.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

from sqlite_utils import Database

from ._errors import CacheError
from .migrations import SCHEMA_VERSION, detect_version, migrate
from ._rows import _BOOLS, _KEY_FIELDS, _decode_text, _insert, _row_entry, _row_trial, _trial_row, _winner_row
from .table_format import check_entries
from ._types import TRIAL_STATUSES, CacheKey, Entry, TrialRecord

T = TypeVar("T")
_WINNER_ORDER = "gpu, kernel, dtype, causal, head_dim, seq_len, kv_len, batch, heads, kv_heads, key_id"
# sqlite result codes (the low byte of ``sqlite3.Error.sqlite_errorcode``) of a read-only connection that cannot
# set up a WAL database's shared memory (its folder is read-only): such a file is then read as immutable.
_SQLITE_READONLY, _SQLITE_CANTOPEN = 8, 14


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


@contextmanager
def _closed_on_error(conn: sqlite3.Connection, where: str):
    """Close ``conn`` if the block fails; an SQLite error becomes one CacheError line."""
    try:
        yield
    except sqlite3.Error as exc:
        conn.close()
        raise CacheError(_describe(where, exc)) from None
    except BaseException:
        conn.close()
        raise


class CacheStore:
    """Winners (the best config per key) and trials (every attempt) in one SQLite database."""

    RETRIES = 5  # attempts of one operation while the database stays locked
    BACKOFF_S = 0.05  # first wait between attempts; doubles, with jitter

    def __init__(self, db: Database, path: Path | None) -> None:
        """Wrap an already opened and migrated database; use :meth:`open` or :meth:`memory` instead."""
        self._db: Database | None = db
        self._path = path
        self._where = str(path) if path is not None else "<memory cache>"
        self._readonly = False

    # -- opening -------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, busy_timeout_ms: int = 30000,
             make_parents: bool = False, readonly: bool = False) -> CacheStore:
        """Open (creating it if needed) the cache at ``path`` and migrate it to SCHEMA_VERSION.

        Its folder must exist (CacheError otherwise: a mistyped path never creates folders) unless
        ``make_parents`` (for the default location in the user's cache directory). Raises CacheError, without
        touching the file, when it is not SQLite, is corrupted, is some other program's database, or was
        written by a newer FlashCore.

        ``readonly=True`` opens an existing file for reading only (sqlite's ``mode=ro``): nothing is created,
        migrated, switched to WAL or otherwise written, so a file the user can only read (a read-only file or
        folder, a rollback-journal database whose folder is read-only) is read all the same; a WAL database in a
        read-only folder, which sqlite cannot attach its shared memory to, is read as immutable (no writer can
        exist there). A file of an older schema (an empty or 0-byte file counts as schema 0) is copied into
        memory and read through the migrations there: the file itself stays as it was. Every writing method of
        such a store raises CacheError.
        """
        if readonly:
            if make_parents:
                raise ValueError("make_parents and readonly exclude each other")
            return cls._open_readonly(Path(path).expanduser(), busy_timeout_ms)
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
        with _closed_on_error(conn, where):
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
        return store

    @classmethod
    def _open_readonly(cls, p: Path, busy_timeout_ms: int) -> CacheStore:
        where = str(p)
        if p.is_dir():
            raise CacheError(f"{where} is a directory, not a FlashCore cache")
        if not p.is_file():
            raise CacheError(f"no cache at {where}" if not p.exists() else f"{where} is not a regular file")
        uri = f"file:{quote(str(p.absolute()), safe='/')}?mode=ro"
        try:
            conn, version = cls._connect_readonly(uri, where, busy_timeout_ms)
        except sqlite3.OperationalError as exc:
            if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) not in (_SQLITE_READONLY, _SQLITE_CANTOPEN):
                raise CacheError(_describe(where, exc)) from None
            try:  # a WAL file in a folder we cannot write: no writer can exist, read it as it is
                conn, version = cls._connect_readonly(uri + "&immutable=1", where, busy_timeout_ms)
            except sqlite3.Error as exc2:
                raise CacheError(_describe(where, exc2)) from None
        except sqlite3.Error as exc:
            raise CacheError(_describe(where, exc)) from None
        if version < SCHEMA_VERSION:  # read an old file through the migrations, in a private copy
            with _closed_on_error(conn, where):
                copy = sqlite3.connect(":memory:", isolation_level=None)
                conn.backup(copy)
            conn.close()
            conn = copy
            with _closed_on_error(conn, where):
                migrate(Database(conn, execute_plugins=False), where)
        store = cls(Database(conn, execute_plugins=False), p)
        store._readonly = True
        return store

    @staticmethod
    def _connect_readonly(uri: str, where: str, busy_timeout_ms: int) -> tuple[sqlite3.Connection, int]:
        """A read-only connection to ``uri`` checked to be a FlashCore cache, and its schema version."""
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)  # lazy: errors come with the first read
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(1)").fetchall()] or ["?"]
            if problems != ["ok"]:
                raise CacheError(f"{where} is not a FlashCore cache (corrupted: {problems[0]})")
            version = detect_version(Database(conn, execute_plugins=False), where)
        except BaseException:
            conn.close()
            raise
        return conn, version

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
        """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction (all or nothing), retried while locked.

        CacheError, writing nothing, on a store opened ``readonly``."""
        if self._readonly:
            raise CacheError(f"{self._where} was opened read-only")

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

    def put_winner(self, entry: Entry, *, replace: bool = False) -> bool:
        """Store ``entry`` unless its key already has a winner at least as fast (``replace``: in any case, for a
        re-measurement of the same one config, such as a backend timed again); return whether it was written.

        The entry is validated with the import rules first (TableError on a bad one).
        """
        check_entries([entry])
        return self._write(lambda db: self._put(db, entry, only_if_faster=not replace))

    def get_winner(self, key: CacheKey) -> Entry | None:
        """The winner stored for ``key``, or None."""

        def read() -> Entry | None:
            rows = list(self._conn_db().table("winners").rows_where("key_id = ?", [key.id]))
            return _row_entry(rows[0], self._where) if rows else None

        return self._retry(read)

    def winners(self, **filters: Any) -> list[Entry]:
        """All winners whose key fields equal the given filters (e.g. ``gpu=..., causal=True``), in a stable order.

        A row that cannot be read as an entry (a column of the wrong type or NULL, text that is not UTF-8, a
        config that is not a JSON object or nests too deep) is skipped with one RuntimeWarning naming its rowid
        and key id and saying why; the other rows are returned. A database that cannot be read at all raises
        CacheError."""
        unknown = sorted(set(filters) - set(_KEY_FIELDS))
        if unknown:
            raise TypeError(f"winners() got unknown filter {unknown[0]!r} (filters are {', '.join(_KEY_FIELDS)})")
        where = " AND ".join(f"[{name}] = ?" for name in filters) or None
        args = [int(v) if name in _BOOLS else v for name, v in filters.items()]

        def read() -> list[dict[str, Any]]:
            db = self._conn_db()
            saved = db.conn.text_factory
            db.conn.text_factory = _decode_text  # a non-UTF-8 text refuses its row, not the whole read
            try:
                return list(db.table("winners").rows_where(where, args, order_by=_WINNER_ORDER,
                                                           select="rowid AS [_rowid], *"))
            finally:
                db.conn.text_factory = saved

        entries = []
        for row in self._retry(read):
            try:
                entries.append(_row_entry(row, self._where))
            except CacheError as exc:
                warnings.warn(f"FlashCore: skipping row {row.get('_rowid')} of the winners: {exc}", RuntimeWarning,
                              stacklevel=2)
        return entries

    def delete_winner(self, key: CacheKey) -> bool:
        """Delete the winner of ``key``; return whether there was one."""
        return self._write(lambda db: db.execute("DELETE FROM winners WHERE key_id = ?", [key.id]).rowcount > 0)

    def import_entries(self, entries: Iterable[Entry], replace: bool, *, validated: bool = False) -> int:
        """Import entries in ONE transaction (all or nothing); return how many were written.

        ``replace=True`` overwrites existing winners of the same keys; ``replace=False`` keeps an existing winner
        unless the imported entry is strictly faster (the :meth:`put_winner` rule). Every entry is validated
        first (TableError naming ``entries[i]``), so a bad one writes nothing; ``validated=True`` skips that
        check for entries that just passed the same rules: the list :func:`read_table` or :func:`parse_table`
        returned, unchanged (``autotune import``: the check was about 40% of writing a large table).
        """
        batch = list(entries)
        if not validated:
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
            return [_row_trial(row, self._where) for row in rows]

        return self._retry(read)
