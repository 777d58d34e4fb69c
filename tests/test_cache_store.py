"""CacheStore: round trips, the faster-wins rule, migrations from old files, and refusal of foreign files."""

from __future__ import annotations

import dataclasses
import random
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from sqlite_utils import Database

import flashcore.cache.migrations
import flashcore.cache.store
from flashcore.cache import SCHEMA_VERSION, CacheError, CacheKey, CacheStore, Entry, TableError, TrialRecord
from flashcore.cache.migrations import migrate

ROOT = Path(__file__).resolve().parents[1]
from _shapes import make_key  # noqa: E402

FIXTURE = Path(__file__).with_name("fixtures") / "cache-v1.db"




def make_entry(key: CacheKey | None = None, median: float = 100.0, **changes: object) -> Entry:
    entry = Entry(
        key=key or make_key(), config={"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "fp8_fast": False},
        median_us=median, p95_us=median * 1.1, p99_us=median * 1.2, tflops=250.5, rel_err=0.001,
        created_at="2025-02-01T12:00:00+00:00",
    )  # fmt: skip
    return dataclasses.replace(entry, **changes)


@pytest.fixture
def store():
    with CacheStore.memory() as s:
        yield s


def snapshot(path: Path) -> bytes:
    return path.read_bytes()


# -- round trips ---------------------------------------------------------------------------------------------


def test_memory_store_basics(store: CacheStore) -> None:
    assert store.path is None
    assert store.schema_version == SCHEMA_VERSION == 3


def test_winner_round_trip(store: CacheStore) -> None:
    entry = make_entry()
    assert store.get_winner(entry.key) is None
    assert store.put_winner(entry) is True
    got = store.get_winner(entry.key)
    assert got == entry
    assert type(got.key.causal) is bool and type(got.key.head_dim) is int
    assert store.winners() == [entry]


def test_trial_round_trip(store: CacheStore) -> None:
    key, other = make_key(), make_key(seq_len=8192)
    ok = TrialRecord(key=key, config={"BLOCK_M": 64}, status="ok", median_us=10.0, p95_us=11.0, p99_us=12.5,
                     tflops=99.0, rel_err=1e-3, max_abs_err=2e-3, study="s1", trial_number=7,
                     created_at="2025-02-01T12:00:00+00:00", extra={"regs": 128, "notes": ["a", "b"]})  # fmt: skip
    failed = TrialRecord(key=key, config={"BLOCK_M": 512}, status="resources", reason="smem 300000 > 232448")
    elsewhere = TrialRecord(key=other, config={}, status="timeout")
    ids = [store.add_trial(rec) for rec in (ok, failed, elsewhere)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert store.trials(key) == [ok, failed]
    assert store.trials() == [ok, failed, elsewhere]
    assert store.trials(make_key(heads=1)) == []


def test_add_trial_rejects_unknown_status(store: CacheStore) -> None:
    with pytest.raises(ValueError, match="status"):
        store.add_trial(TrialRecord(key=make_key(), config={}, status="great"))


def test_replace_only_if_strictly_faster(store: CacheStore) -> None:
    assert store.put_winner(make_entry(median=10.0)) is True
    assert store.put_winner(make_entry(median=12.0)) is False
    assert store.put_winner(make_entry(median=10.0, config={"BLOCK_M": 16})) is False  # a tie keeps the old one
    assert store.get_winner(make_key()).config["BLOCK_M"] == 128
    assert store.put_winner(make_entry(median=9.0, config={"BLOCK_M": 32})) is True
    winner = store.get_winner(make_key())
    assert (winner.median_us, winner.config) == (9.0, {"BLOCK_M": 32})
    assert len(store.winners()) == 1


def test_put_winner_replace_takes_a_slower_remeasurement(store: CacheStore) -> None:
    assert store.put_winner(make_entry(median=10.0)) is True
    assert store.put_winner(make_entry(median=12.0), replace=True) is True  # a backend re-timed (sweep --retune)
    assert store.get_winner(make_key()).median_us == 12.0
    assert len(store.winners()) == 1


def test_put_winner_validates(store: CacheStore) -> None:
    with pytest.raises(TableError, match=r"median_us"):
        store.put_winner(make_entry(median=float("nan")))
    assert store.winners() == []


def test_filters_and_delete(store: CacheStore) -> None:
    a = make_entry(make_key())
    b = make_entry(make_key(causal=False))
    c = make_entry(make_key(gpu="NVIDIA A100-SXM4-80GB", compute_capability="8.0", head_dim=64))
    d = make_entry(make_key(kernel="attention_bwd", dtype="bfloat16"))
    for e in (a, b, c, d):
        assert store.put_winner(e)
    assert len(store.winners()) == 4
    assert store.winners(gpu="NVIDIA A100-SXM4-80GB") == [c]
    assert store.winners(causal=False) == [b]
    assert store.winners(kernel="attention_fwd", head_dim=128, causal=True) == [a]
    assert store.winners(dtype="bfloat16") == [d]
    assert store.winners(gpu="nope") == []
    with pytest.raises(TypeError, match="BLOCK_M"):
        store.winners(BLOCK_M=128)
    assert store.delete_winner(b.key) is True
    assert store.delete_winner(b.key) is False
    assert store.get_winner(b.key) is None and len(store.winners()) == 3


def test_closed_store_raises() -> None:
    s = CacheStore.memory()
    s.close()
    s.close()
    with pytest.raises(CacheError, match="closed"):
        s.winners()


# -- import_entries: all or nothing --------------------------------------------------------------------------


def test_import_entries_replace_semantics(store: CacheStore) -> None:
    store.put_winner(make_entry(make_key(), median=10.0))
    batch = [make_entry(make_key(), median=20.0), make_entry(make_key(heads=8), median=5.0)]
    assert store.import_entries(batch, replace=False) == 1  # the slower import does not displace the winner
    assert store.get_winner(make_key()).median_us == 10.0
    assert store.import_entries(batch, replace=True) == 2
    assert store.get_winner(make_key()).median_us == 20.0


def test_import_entries_invalid_entry_writes_nothing(store: CacheStore) -> None:
    batch = [make_entry(make_key(heads=h)) for h in (1, 2, 3)]
    batch[2] = make_entry(make_key(heads=3), config={"BLOCK_M": 10**9})
    with pytest.raises(TableError, match=r"entries\[2\]\.config\.BLOCK_M"):
        store.import_entries(batch, replace=True)
    assert store.winners() == []


def test_import_entries_failure_midway_rolls_back(store: CacheStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.put_winner(make_entry(make_key(heads=1), median=50.0))
    real = flashcore.cache.store._winner_row
    calls = []

    def failing(entry: Entry) -> dict:
        calls.append(entry)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(entry)

    monkeypatch.setattr(flashcore.cache.store, "_winner_row", failing)
    batch = [make_entry(make_key(heads=h), median=1.0) for h in (1, 2, 3, 4)]
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.import_entries(batch, replace=True)
    monkeypatch.undo()
    assert [(e.key.heads, e.median_us) for e in store.winners()] == [(1, 50.0)]


# -- files: creation, migration, refusal ---------------------------------------------------------------------


def test_open_refuses_a_missing_folder_unless_asked_to_make_it(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "cache.db"
    with pytest.raises(CacheError, match="does not exist"):
        CacheStore.open(path)
    assert not (tmp_path / "a").exists()


def test_open_creates_folders_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "cache.db"
    with CacheStore.open(path, make_parents=True) as s:
        assert s.path == path and s.schema_version == 3
        s.put_winner(make_entry())
        s.add_trial(TrialRecord(key=make_key(), config={}, status="ok"))
        mode = s._conn_db().execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    with CacheStore.open(str(path)) as s:
        assert s.winners() == [make_entry()] and len(s.trials()) == 1


def test_v1_fixture_schema_matches_migration_one(tmp_path: Path) -> None:
    def columns(conn: sqlite3.Connection) -> dict:
        return {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in ("winners", "trials")}

    fresh = Database(sqlite3.connect(":memory:", isolation_level=None), execute_plugins=False)
    assert migrate(fresh, "<test>", target=1) == 1
    fixture = sqlite3.connect(FIXTURE)
    try:
        assert columns(fixture) == columns(fresh.conn)
        assert fixture.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        fixture.close()


def test_upgrade_from_v1_fixture(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    shutil.copyfile(FIXTURE, path)
    with CacheStore.open(path) as s:
        assert s.schema_version == 3
        winners = s.winners()
        assert len(winners) == 2
        for w in winners:
            assert w.p99_us == w.p95_us  # migrated rows take their p95 as the p99 bound
            assert s.get_winner(w.key) == w  # the stored key_id still equals CacheKey.id
        by_dtype = {w.key.dtype: w for w in winners}
        assert by_dtype["float16"].median_us == 812.5 and by_dtype["float16"].key.causal is True
        assert by_dtype["bfloat16"].config == {"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 2, "num_warps": 4}
        trials = s.trials()
        assert [t.status for t in trials] == ["ok", "resources", "ok"]
        assert all(t.extra == {} for t in trials)
        assert trials[1].median_us is None and trials[1].reason.startswith("out of shared memory")
        assert trials[0].p99_us == trials[0].p95_us == 830.0
        assert len(s.trials(by_dtype["float16"].key)) == 2
        conn = s._conn_db().conn
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
        for w in winners:  # schema 3: one kv head per query head and one length, as every old entry had
            assert (w.key.kv_heads, w.key.kv_len, w.key.lower_right) == (w.key.heads, w.key.seq_len, False)
        # the upgraded file takes new writes with the new columns
        s.add_trial(TrialRecord(key=winners[0].key, config={}, status="ok", p99_us=1.0, extra={"k": 1}))
        assert s.trials()[-1].extra == {"k": 1}
    with CacheStore.open(path) as s:  # reopening an upgraded file is a no-op
        assert s.schema_version == 3 and len(s.trials()) == 4


def test_failed_migration_leaves_the_file_at_v1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cache.db"
    shutil.copyfile(FIXTURE, path)

    def broken_v2(db: Database) -> None:
        db.execute("ALTER TABLE winners ADD COLUMN p99_us REAL")
        raise sqlite3.OperationalError("disk I/O error")

    migrations = flashcore.cache.migrations.MIGRATIONS
    monkeypatch.setattr(flashcore.cache.migrations, "MIGRATIONS", (migrations[0], broken_v2, *migrations[2:]))
    with pytest.raises(CacheError, match="disk I/O error"):
        CacheStore.open(path)
    monkeypatch.undo()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert "p99_us" not in [row[1] for row in conn.execute("PRAGMA table_info(winners)")]
    finally:
        conn.close()
    with CacheStore.open(path) as s:  # and a later open, with working code, upgrades it
        assert s.schema_version == 3 and len(s.winners()) == 2


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    CacheStore.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    before = snapshot(path)
    with pytest.raises(CacheError, match=r"was written by a newer FlashCore \(schema 4\); upgrade flashcore"):
        CacheStore.open(path)
    assert snapshot(path) == before


def _sqlite_file_with_data(path: Path) -> None:
    with CacheStore.open(path) as s:
        for i in range(300):
            s.add_trial(TrialRecord(key=make_key(heads=i + 1), config={"BLOCK_M": 64}, status="ok",
                                    reason="x" * 200))  # fmt: skip


def _truncated(path: Path) -> None:
    _sqlite_file_with_data(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _scribbled(path: Path) -> None:
    _sqlite_file_with_data(path)
    data = bytearray(path.read_bytes())
    data[4096:12288] = random.Random(1).randbytes(8192)
    path.write_bytes(bytes(data))


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('alice')")
    conn.commit()
    conn.close()


def _foreign_meta(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (a TEXT, b TEXT)")
    conn.execute("CREATE TABLE winners (x INTEGER)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.write_bytes(random.Random(0).randbytes(8192)), id="random-bytes"),
        pytest.param(lambda p: p.write_text("gpu,kernel\nH100,attention_fwd\n" * 50), id="text-file"),
        pytest.param(lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\x00" * 50), id="bare-sqlite-header"),
        pytest.param(_truncated, id="truncated-sqlite"),
        pytest.param(_scribbled, id="corrupted-sqlite"),
        pytest.param(_foreign, id="foreign-sqlite"),
        pytest.param(_foreign_meta, id="foreign-sqlite-with-meta-table"),
    ],
)
def test_not_a_cache_is_refused_untouched(tmp_path: Path, make) -> None:
    path = tmp_path / "cache.db"
    make(path)
    before = snapshot(path)
    with pytest.raises(CacheError, match=r"is not a FlashCore cache \(") as info:
        CacheStore.open(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert snapshot(path) == before


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="is a directory"):
        CacheStore.open(tmp_path)


# -- concurrency ---------------------------------------------------------------------------------------------


def test_locked_database_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cache.db"
    s = CacheStore.open(path, busy_timeout_ms=10)
    monkeypatch.setattr(CacheStore, "BACKOFF_S", 0.05)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.15, lambda: holder.execute("COMMIT"))
    timer.start()
    try:
        assert s.put_winner(make_entry()) is True  # first attempts hit the lock, a later one succeeds
    finally:
        timer.join()
        holder.close()
    assert s.get_winner(make_key()) is not None
    s.close()


def test_lock_that_never_clears_gives_cache_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cache.db"
    s = CacheStore.open(path, busy_timeout_ms=1)
    monkeypatch.setattr(CacheStore, "BACKOFF_S", 0.001)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(CacheError, match="locked"):
            s.put_winner(make_entry())
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        s.close()


@pytest.mark.slow
def test_concurrent_processes_keep_the_fastest(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "cache.db"
    script = textwrap.dedent(
        """
        import sys
        from flashcore.cache import CacheKey, CacheStore, Entry
        key = CacheKey("gpu", "9.0", "3.1", "attention_fwd", "h", "float16", True, 64, 128, 1, 1)
        worker = int(sys.argv[2])
        with CacheStore.open(sys.argv[1], make_parents=True) as store:
            for i in range(40):
                median = 1000.0 - i * 10 - worker  # worker 3's last write (607.0) is the global minimum
                store.put_winner(Entry(key, {"w": worker, "i": i}, median, median, median, 1.0, 0.0,
                                       "2025-01-01T00:00:00Z"))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), str(w)], cwd=ROOT, stderr=subprocess.PIPE)
        for w in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    with CacheStore.open(path) as s:
        (winner,) = s.winners()
        assert winner.median_us == 607.0 and winner.config == {"i": 39, "w": 3}


def test_v2_winners_that_differ_only_by_torch_collapse_to_the_fastest(tmp_path: Path) -> None:
    """Schema 3 takes the torch version out of the key: two schema-2 winners of one point measured with two torch
    builds become one key, and the migration keeps the faster; trials keep their rows under the new key."""
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    db = Database(conn, execute_plugins=False)
    assert migrate(db, "<v2>", target=2) == 2
    base = dict(gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", triton_version="3.6.0", kernel="attention_fwd",
                kernel_hash="a5c27be1af7945f5", dtype="float16", causal=1, head_dim=128, seq_len=4096, batch=8,
                heads=16, config='{"BLOCK_M": 128}', p95_us=1.0, p99_us=1.0, tflops=1.0, rel_err=1e-4,
                created_at="2026-01-01T00:00:00+00:00")
    for torch_version, median in (("2.10.0", 900.0), ("2.11.0+cu130", 850.0)):
        row = {**base, "key_id": torch_version, "torch_version": torch_version, "median_us": median, "p95_us": median,
               "p99_us": median}
        db.execute(f"INSERT INTO winners ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
        trial = {k: v for k, v in row.items() if k not in ("p95_us", "p99_us", "tflops", "rel_err", "median_us")}
        trial["status"] = "ok"
        db.execute(f"INSERT INTO trials ({', '.join(trial)}) VALUES ({', '.join('?' for _ in trial)})",
                   list(trial.values()))
    conn.close()
    with CacheStore.open(path) as s:
        winners = s.winners()
        assert len(winners) == 1 and winners[0].median_us == 850.0 and winners[0].torch_version == "2.11.0+cu130"
        key = winners[0].key
        assert (key.kv_heads, key.kv_len, key.lower_right) == (16, 4096, False)
        assert len(s.trials(key)) == 2
        assert flashcore.cache.migrations.key_id_v3(
            {**key.as_dict(), "causal": int(key.causal), "lower_right": int(key.lower_right)}) == key.id
