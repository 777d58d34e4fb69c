"""Numbered schema migrations of the cache database, in the spirit of sqlite-utils' ``Migrations``.

``MIGRATIONS[n - 1]`` takes a database from schema ``n - 1`` to schema ``n``; a fresh database runs them all.
Each migration is frozen once released: never edit one, add the next. The version of a database is read
from the ``meta`` table (schema 2 on) or from ``PRAGMA user_version`` (schema 1, which had no ``meta``).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable

from sqlite_utils import Database

from ._errors import CacheError

SCHEMA_VERSION = 3
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


# The key fields of schema 3, and its key id: a frozen copy of CacheKey.id as it was when schema 3 was made
# (tests check that the two agree), so that this migration keeps meaning the same thing whatever CacheKey becomes.
_V3_KEY_FIELDS = ("gpu", "compute_capability", "triton_version", "kernel", "kernel_hash", "dtype", "causal",
                  "head_dim", "seq_len", "batch", "heads", "kv_heads", "kv_len", "lower_right")


def key_id_v3(row: dict) -> str:
    """The schema-3 key id of a row (its key columns)."""
    values = {name: row[name] for name in _V3_KEY_FIELDS}
    values["causal"] = bool(values["causal"])
    values["lower_right"] = bool(values["lower_right"])
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _to_v3(db: Database) -> None:
    """Schema 3: grouped-query heads (``kv_heads``), unequal lengths (``kv_len``), the causal alignment
    (``lower_right``); the torch version leaves the key (recorded, no longer required to serve). Old rows get
    kv_heads = heads, kv_len = seq_len, lower_right = 0 and new key ids; winners that now share a key (they
    differed only by torch version) keep the fastest."""
    for name in ("winners", "trials"):
        db.table(name).add_column("kv_heads", int, not_null_default=0)
        db.table(name).add_column("kv_len", int, not_null_default=0)
        db.table(name).add_column("lower_right", int, not_null_default=0)
        db.execute(f"UPDATE {name} SET kv_heads = heads, kv_len = seq_len")
    cursor = db.execute("SELECT * FROM trials")
    columns = [c[0] for c in cursor.description]
    for values in cursor.fetchall():
        row = dict(zip(columns, values))
        db.execute("UPDATE trials SET key_id = ? WHERE id = ?", [key_id_v3(row), row["id"]])
    cursor = db.execute("SELECT * FROM winners")
    columns = [c[0] for c in cursor.description]
    best: dict[str, dict] = {}
    for values in cursor.fetchall():
        row = dict(zip(columns, values))
        row["key_id"] = key_id_v3(row)
        if row["key_id"] not in best or row["median_us"] < best[row["key_id"]]["median_us"]:
            best[row["key_id"]] = row
    db.execute("DELETE FROM winners")
    for row in best.values():
        names = ", ".join(f"[{c}]" for c in row)
        db.execute(f"INSERT INTO winners ({names}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
    _set_version(db, 3)


MIGRATIONS: tuple[Migration, ...] = (_to_v1, _to_v2, _to_v3)
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
