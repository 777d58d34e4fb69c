"""Model code never breaks because of the cache (issues 18 and 19).

Malformed rows are skipped with one warning each, configs their family cannot run are never served, a cache the
user can only read is served without being written, files that are not FlashCore caches are never touched,
misses are never written through a planted symlink or into someone else's file, and ``autotune misses`` drops
the shapes tuned since. Shapes are odd on purpose (S not a multiple of any tile, odd H).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from sqlite_utils import Database
from typer.testing import CliRunner

from flashcore.autotune import PROFILES, Point, attention, check, clear_cache, get_kernel
from flashcore.autotune.cli.app import app
from flashcore.autotune.core.toolchain import make_key
from flashcore.autotune.runtime.index import usable
from flashcore.autotune.runtime.misses import misses_path, read_misses
from flashcore.autotune.tuning.inputs import make_inputs
from flashcore.cache import CacheStore, Entry
from flashcore.cache.migrations import migrate
from flashcore.cache.store import _winner_row
from flashcore.kernels import get_family
from flashcore.kernels.reference import attention_reference
from flashcore.kernels import load_space

from _procs import child_env
from test_dispatch import entry as dispatch_entry

CPU = PROFILES["cpu"]
H100 = "NVIDIA H100 80GB HBM3"
SHAPE = (1, 3, 77, 64)  # the tuned point
OTHER = (1, 3, 150, 64)  # same group, not tuned: a lookup that weighs every entry of the group


def good(s: int = 77, h: int = 3) -> Entry:
    """A winner get_kernel serves: test_dispatch's entry with the cpu space's full default config."""
    e = dispatch_entry(s, h=h)
    return dataclasses.replace(e, config=load_space("attention_fwd", "cpu").default_for(Point(1, h, s, 64), CPU))


def make_cache(path: Path, *entries: Entry) -> Path:
    with CacheStore.open(path) as store:
        for e in entries or (good(), good(300)):
            store.put_winner(e)
    return path


def plant(path: Path, row: dict, sql: str | None = None) -> None:
    """Insert a winner row as is (no validation), then run ``sql`` (e.g. an UPDATE SQLite cannot bind)."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(f"INSERT INTO winners ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                     list(row.values()))
        if sql:
            conn.execute(sql)
    conn.close()


def flashcore_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, RuntimeWarning) and "FlashCore" in str(w.message)]


def state(path: Path) -> tuple:
    """What must not change: the file's bytes and mtime, and the names in its folder."""
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(p.name for p in path.parent.iterdir())


# -- 1. malformed rows --------------------------------------------------------------------------------------

BOMB = "[" * 100_000 + "]" * 100_000
BAD_ROWS = {  # name: (column changes, SQL run after the insert)
    "array-depth-bomb": ({"config": BOMB}, None),
    "object-depth-bomb": ({"config": '{"a":' * 100_000 + "1" + "}" * 100_000}, None),
    "config-not-an-object": ({"config": "[64, 64]"}, None),
    "text-in-batch": ({"batch": "two"}, None),
    "text-in-head_dim": ({"head_dim": "sixty-four"}, None),
    "float-in-heads": ({"heads": 2.5}, None),
    "negative-seq_len": ({"seq_len": -77}, None),
    "causal-is-7": ({"causal": 7}, None),
    "null-p99": ({"p99_us": None}, None),
    "blob-gpu": ({"gpu": b"cpu-interpreter"}, None),
    "gpu-not-utf8": ({}, "UPDATE winners SET gpu = CAST(X'FFFE' AS TEXT) WHERE key_id = 'bad'"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_malformed_row_is_skipped_with_one_warning_and_the_rest_is_served(tmp_path, case):
    db = make_cache(tmp_path / "c.db")
    changes, sql = BAD_ROWS[case]
    plant(db, {**_winner_row(good(150)), "key_id": "bad", **changes}, sql)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert get_kernel(SHAPE, db=db).source == "exact"
        get_kernel(OTHER, db=db)  # weighs every entry of the group (distance, lengths, heads)
        get_kernel((1, 3, 150, 64), db=db, causal=True)
    found = flashcore_warnings(record)
    assert len(found) == 1 and "'bad'" in found[0], found


def test_a_key_that_describes_no_problem_is_skipped_with_one_warning(tmp_path):
    """Query heads that are not a multiple of the key/value heads: well typed, but no problem at all."""
    bad = dataclasses.replace(good(150), key=dataclasses.replace(good(150).key, heads=2, kv_heads=4))
    db = make_cache(tmp_path / "c.db")
    plant(db, _winner_row(bad))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert get_kernel(SHAPE, db=db).source == "exact"
        get_kernel((1, 4, 150, 64), db=db)
    found = flashcore_warnings(record)
    assert len(found) == 1 and bad.key.id in found[0], found


def test_attention_computes_through_a_poisoned_default_cache(monkeypatch, tmp_path):
    db = Path(os.environ["AUTOTUNE_DB"])  # what attention() reads (tests/conftest.py)
    make_cache(db)
    plant(db, {**_winner_row(good(150)), "key_id": "bomb", "config": BOMB})
    plant(db, {**_winner_row(good(120)), "key_id": "text", "batch": "one"})
    q, k, v = make_inputs(Point(*SHAPE))
    with pytest.warns(RuntimeWarning, match="bomb"):
        out = attention(q, k, v)
    assert check(out, attention_reference(q, k, v, causal=False), "float16").passed


def test_a_depth_bomb_in_a_shipped_table_is_ignored_with_a_warning(monkeypatch, tmp_path):
    from flashcore.autotune.runtime import index

    monkeypatch.setattr(index, "shipped_tables", lambda: [("bomb.json", BOMB)])
    with pytest.warns(RuntimeWarning, match="bomb.json"):
        assert get_kernel(SHAPE, db=tmp_path / "none.db").source != "exact"


# -- 2. configs the family cannot run -----------------------------------------------------------------------

def _changed(**changes) -> dict:
    config = {**good().config, **changes}
    return {k: v for k, v in config.items() if v is not ...}


UNRUNNABLE = {
    "BLOCK_M-1e9": _changed(BLOCK_M=10**9),
    "num_warps-negative": _changed(num_warps=-4),
    "missing-key": _changed(LOADS=...),
    "extra-key": _changed(EXTRA=1),
    "empty": {},
    "string-for-int": _changed(BLOCK_N="32"),
    "float-for-int": _changed(BLOCK_M=32.0),
    "bool-for-int": _changed(num_stages=True),
    "bool-for-string": _changed(LOADS=True),
    "unknown-LOADS": _changed(LOADS="carrier_pigeon"),
    "list-value": _changed(BLOCK_M=[32]),
    "tile-over-the-sequence": _changed(BLOCK_M=256),  # a named rule (tile_within_sequence) at S=77
}


@pytest.mark.parametrize("case", sorted(UNRUNNABLE))
def test_a_config_its_family_cannot_run_is_never_served(tmp_path, case):
    bad = dataclasses.replace(good(), config=UNRUNNABLE[case])
    db = make_cache(tmp_path / "c.db", good(300))
    plant(db, _winner_row(bad))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        served = get_kernel(SHAPE, db=db)
        assert served.source != "exact"
        q, k, v = make_inputs(Point(*SHAPE))
        assert check(served(q, k, v), attention_reference(q, k, v, causal=False), "float16").passed
    found = [w for w in flashcore_warnings(record) if "not serving" in w]
    assert len(found) == 1 and bad.key.id in found[0], found


def _family_entry(kernel: str, gpu: str, point: Point, config: dict | None = None) -> Entry:
    family = get_family(kernel)
    profile = CPU if gpu == "cpu-interpreter" else PROFILES["h100"]
    if config is None:
        config = load_space(family.space, profile.name).default_for(point, profile)
    key = make_key(point, family, gpu, profile.compute_capability)
    return Entry(key, config, 10.0, 11.0, 12.0, 1.0, 1e-4, "2026-01-01T00:00:00+00:00")


FAMILY_POINTS = [("attention_fwd", "cpu-interpreter", Point(1, 3, 77, 64)),
                 ("attention_kv", "cpu-interpreter", Point(2, 6, 3, 64, True, "float16", 3, 77, True)),
                 ("attention_fp8", "cpu-interpreter", Point(1, 3, 77, 64, False, "fp8")),
                 ("attention_gluon", H100, Point(1, 3, 77, 128)),
                 ("attention_fwd", H100, Point(1, 3, 77, 128))]


@pytest.mark.parametrize("kernel, gpu, point", FAMILY_POINTS, ids=[f"{k}-{g[:3]}" for k, g, _ in FAMILY_POINTS])
def test_each_family_checks_its_configs_with_its_launcher(kernel, gpu, point):
    assert get_family(kernel).checker  # every family of ours names one
    assert usable(_family_entry(kernel, gpu, point))  # the space's own default is runnable
    for change in ({"BLOCK_M": 10**9}, {"num_warps": -4}, {"BLOCK_N": 48}):  # 48: right type, no such tile
        bad = _family_entry(kernel, gpu, point, {**_family_entry(kernel, gpu, point).config, **change})
        with pytest.warns(RuntimeWarning, match=bad.key.id):
            assert not usable(bad)


def test_a_backend_serves_only_the_empty_config():
    point = Point(1, 3, 77, 64)
    assert usable(_family_entry("sdpa_flash", H100, point, {}))
    with pytest.warns(RuntimeWarning, match="backend takes no config"):
        assert not usable(_family_entry("sdpa_flash", H100, point, {"BLOCK_M": 64}))


def test_the_verdict_is_memoised_per_entry(monkeypatch):
    from flashcore.autotune.runtime import index

    ok = good()
    bad = dataclasses.replace(good(), config={})
    with pytest.warns(RuntimeWarning):
        assert usable(ok) and not usable(bad)
    monkeypatch.setattr(index, "unusable_reason", lambda entry: pytest.fail("judged twice"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no second warning
        assert usable(ok) and not usable(bad)


# -- 3. read-only caches ------------------------------------------------------------------------------------

def _rollback_journal(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    conn.close()


def _schema_2(path: Path) -> None:
    """Rebuild ``path`` as a schema-2 cache (before kv_heads) holding the same winner at SHAPE."""
    path.unlink()
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(Database(conn, execute_plugins=False), "<v2>", target=2)
    row = {k: v for k, v in _winner_row(good()).items() if k not in ("kv_heads", "kv_len", "lower_right")}
    conn.execute(f"INSERT INTO winners ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()


@pytest.mark.parametrize("make", [lambda p: None, _rollback_journal, _schema_2], ids=["wal", "rollback", "schema-2"])
def test_serving_reads_the_cache_without_writing_anything(tmp_path, make):
    db = make_cache(tmp_path / "c.db")
    make(db)
    before = state(db)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        served = get_kernel(SHAPE, db=db)
    assert served.source == "exact" and served.config == good().config
    clear_cache()
    after = state(db)
    assert after[:2] == before[:2]  # no migration, no switch to WAL, no checkpoint: the file is as it was
    # a reader of a WAL file may leave SQLite's shared memory and an empty log beside it, nothing else
    assert set(after[2]) - set(before[2]) <= {"c.db-shm", "c.db-wal"}
    assert not (tmp_path / "c.db-wal").exists() or (tmp_path / "c.db-wal").stat().st_size == 0


def _reader_cmd(db: Path) -> list[str]:
    code = f"from flashcore.autotune import get_kernel; print(get_kernel({SHAPE}, db={str(db)!r}).source)"
    cmd = [sys.executable, "-c", code]
    if os.geteuid() != 0:
        return cmd
    # root ignores file modes: drop the capabilities that let it (setpriv, util-linux), so the modes apply
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--", *cmd]


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None,
                    reason="as root, file modes only apply without CAP_DAC_OVERRIDE (needs setpriv)")
@pytest.mark.parametrize("folder_writable", [False, True], ids=["read-only-folder", "read-only-file"])
@pytest.mark.parametrize("make", [lambda p: None, _rollback_journal], ids=["wal", "rollback"])
def test_a_cache_the_user_can_only_read_is_served(tmp_path, make, folder_writable):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = make_cache(folder / "c.db")
    make(db)
    db.chmod(0o444)
    folder.chmod(0o755 if folder_writable else 0o555)
    try:
        before = db.read_bytes(), db.stat().st_mtime_ns
        out = subprocess.run(_reader_cmd(db), check=False, env=child_env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and out.stdout.strip() == "exact", out.stderr[-2000:]
        assert "FlashCore" not in out.stderr, out.stderr[-2000:]
        assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    finally:
        folder.chmod(0o755)


# -- 4. files that are not FlashCore caches -----------------------------------------------------------------

def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.close()


@pytest.mark.parametrize("make", [lambda p: p.write_bytes(b""), _foreign,
                                  lambda p: p.write_text("not a database\n" * 50)],
                         ids=["empty-file", "foreign-sqlite", "text-file"])
def test_a_file_that_is_not_a_flashcore_cache_is_never_written(tmp_path, make):
    db = tmp_path / "c.db"
    make(db)
    before = state(db)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a foreign or text file is ignored with a warning; an empty one is empty
        assert get_kernel(SHAPE, db=db).source != "exact"
        get_kernel(OTHER, db=db)
    clear_cache()
    after = state(db)
    assert after[:2] == before[:2]
    assert set(after[2]) - set(before[2]) <= {misses_path(db).name}  # only the misses file may appear beside it


def test_a_read_only_store_refuses_every_write(tmp_path):
    from flashcore.cache import CacheError

    db = make_cache(tmp_path / "c.db")
    with CacheStore.open(db, readonly=True) as store:
        assert len(store.winners()) == 2
        with pytest.raises(CacheError, match="read-only"):
            store.put_winner(good(500))
    with pytest.raises(CacheError, match="no cache"):
        CacheStore.open(tmp_path / "none.db", readonly=True)
    assert not (tmp_path / "none.db").exists()


# -- 5. the misses file -------------------------------------------------------------------------------------

def test_misses_are_never_written_through_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    db = tmp_path / "c.db"
    misses_path(db).symlink_to(victim)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert get_kernel(OTHER, db=db).source != "exact"
        get_kernel((1, 3, 99, 64), db=db)  # a second miss: no second warning for the same file
    found = flashcore_warnings(record)
    assert len(found) == 1 and "symbolic link" in found[0], found
    assert victim.read_text() == "precious\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_misses_are_never_written_into_another_users_file(tmp_path):
    db = tmp_path / "c.db"
    misses_path(db).write_text("")
    os.chown(misses_path(db), 65534, 65534)
    with pytest.warns(RuntimeWarning, match="belongs to user 65534"):
        assert get_kernel(OTHER, db=db).source != "exact"
    assert misses_path(db).read_text() == ""


# -- 6. autotune misses drops what has been tuned since -----------------------------------------------------

def test_misses_tuned_since_are_dropped(tmp_path):
    db = make_cache(tmp_path / "c.db", good(300))
    for shape in (SHAPE, OTHER):
        assert get_kernel(shape, db=db).source != "exact"
    assert len(read_misses(db)) == 2
    make_cache(db, good())  # SHAPE is tuned now
    assert [m["seq_len"] for m, _ in read_misses(db, drop_tuned=True)] == [150]
    assert len(read_misses(db)) == 2  # the log itself is kept
    out = CliRunner().invoke(app, ["misses", "--db", str(db)])
    assert out.exit_code == 0, out.output
    assert "S150" in out.output and "S77" not in out.output
