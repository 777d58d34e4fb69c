"""Numbered schema migrations of the cache database, in the spirit of sqlite-utils' ``Migrations``.

``MIGRATIONS[n - 1]`` takes a database from schema ``n - 1`` to schema ``n``; a fresh database runs them all.
Each migration is frozen once released: never edit one, add the next. The version of a database is read
from the ``meta`` table (schema 2 on) or from ``PRAGMA user_version`` (schema 1, which had no ``meta``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from sqlite_utils import Database

from ._errors import CacheError

SCHEMA_VERSION = 2
CACHE_TABLES = frozenset({"winners", "trials"})

Migration = Callable[[Database], None]

# Schema 1, exactly as the first release wrote it (tests/fixtures/make_cache_v1.py keeps a copy).
_V1_DDL = (
    """CREATE TABLE winners (
    key_id TEXT PRIMARY KEY,
    gpu TEXT NOT NULL, compute_capability TEXT NOT NULL, triton_version TEXT NOT NULL,
    torch_version TEXT NOT NULL, kernel TEXT NOT NULL, kernel_hash TEXT NOT NULL, dtype TEXT NOT NULL,
    causal INTEGER NOT NULL, head_dim INTEGER NOT NULL, seq_len INTEGER NOT NULL, batch INTEGER NOT NULL,
    heads INTEGER NOT NULL,
    config TEXT NOT NULL,
    median_us REAL NOT NULL, p95_us REAL NOT NULL, tflops REAL NOT NULL, rel_err REAL NOT NULL,
    created_at TEXT NOT NULL
)""",
    """CREATE TABLE trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL,
    gpu TEXT NOT NULL, compute_capability TEXT NOT NULL, triton_version TEXT NOT NULL,
    torch_version TEXT NOT NULL, kernel TEXT NOT NULL, kernel_hash TEXT NOT NULL, dtype TEXT NOT NULL,
    causal INTEGER NOT NULL, head_dim INTEGER NOT NULL, seq_len INTEGER NOT NULL, batch INTEGER NOT NULL,
    heads INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    median_us REAL, p95_us REAL, tflops REAL, rel_err REAL, max_abs_err REAL,
    study TEXT NOT NULL DEFAULT '', trial_number INTEGER, created_at TEXT NOT NULL DEFAULT ''
)""",
    "CREATE INDEX idx_trials_key_id ON trials (key_id)",
)


def _set_version(db: Database, version: int) -> None:
    """Record ``version`` in both markers (``meta.schema_version`` and ``PRAGMA user_version``)."""
    # Plain SQL, not Table.upsert: sqlite-utils 3.x's write helpers commit on their own, mid-migration.
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", [str(version)])
    db.execute(f"PRAGMA user_version = {int(version)}")


def _to_v1(db: Database) -> None:
    """Schema 1: winners and trials, version in ``PRAGMA user_version``."""
    for statement in _V1_DDL:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")


def _to_v2(db: Database) -> None:
    """Schema 2: ``p99_us`` on winners and trials, ``trials.extra`` (JSON), and the ``meta`` table."""
    for name in ("winners", "trials"):
        db.table(name).add_column("p99_us", float)
        # Old rows never measured a p99: the p95 is the best bound we have.
        db.execute(f"UPDATE {name} SET p99_us = p95_us")
    db.table("trials").add_column("extra", str, not_null_default="{}")
    db.table("meta").create({"key": str, "value": str}, pk="key", not_null=["value"])
    _set_version(db, 2)


MIGRATIONS: tuple[Migration, ...] = (_to_v1, _to_v2)
assert len(MIGRATIONS) == SCHEMA_VERSION


def _tables(db: Database) -> set[str]:
    return {name for name in db.table_names() if not name.startswith("sqlite_")}


def detect_version(db: Database, where: str) -> int:
    """Return the schema version of ``db`` (0 for an empty database) without writing anything.

    Raises CacheError when the database is not a FlashCore cache, or was written by a newer FlashCore.
    """
    tables = _tables(db)
    user_version = int(db.execute("PRAGMA user_version").fetchone()[0])
    version: int | None = None
    if "meta" in tables:
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:  # a foreign table that happens to be called "meta"
            row = None
        text = str(row[0]) if row is not None and row[0] is not None else ""
        if text.isascii() and text.isdigit() and int(text) >= 1:
            version = int(text)
    elif user_version == 1 and CACHE_TABLES <= tables:
        version = 1
    elif not tables and user_version == 0:
        return 0
    elif user_version > SCHEMA_VERSION and "winners" in tables:
        version = user_version
    if version is None:
        shown = ", ".join(sorted(tables)[:5]) + (", …" if len(tables) > 5 else "")
        raise CacheError(f"{where} is not a FlashCore cache (it holds tables {shown} and no FlashCore schema marker)")
    if version > SCHEMA_VERSION:
        raise CacheError(f"{where} was written by a newer FlashCore (schema {version}); upgrade flashcore")
    missing = sorted(CACHE_TABLES - tables)
    if missing:
        raise CacheError(f"{where} is not a FlashCore cache (schema {version} but table {missing[0]} is missing)")
    return version


def migrate(db: Database, where: str, target: int = SCHEMA_VERSION) -> int:
    """Bring ``db`` up to schema ``target`` in one ``BEGIN IMMEDIATE`` transaction; return the version reached.

    The version is re-read inside the transaction, so two processes opening the same old file at once migrate
    it exactly once. ``db`` must be in autocommit mode (``isolation_level=None``).
    """
    version = detect_version(db, where)
    if version >= target:
        return version
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = detect_version(db, where)
        for number, step in enumerate(MIGRATIONS, start=1):
            if current < number <= target:
                step(db)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return detect_version(db, where)
