"""Hostile input at the CLI: every bad table or cache file is one error line, and the cache is left untouched.

Through typer's CliRunner, as a user would meet them. The cache file is compared byte for byte after the
store is closed (closing checkpoints the WAL into the file and removes it).
"""

from __future__ import annotations

import copy
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flashcore.autotune import Point
from flashcore.autotune.core.toolchain import make_key
from flashcore.autotune.cli.app import app
from flashcore.cache import CacheStore, Entry, export_table
from flashcore.kernels import get_family

from _shapes import fwd_config

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SQL = "x'); DROP TABLE winners;--"


def entry(seq_len: int = 64, median: float = 50.0) -> Entry:
    key = make_key(Point(1, 2, seq_len, 32), get_family("attention_fwd"), "cpu-interpreter", "cpu")
    config = fwd_config(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1, CAUSAL_SPLIT=False)
    return Entry(key, config, median, median * 1.1, median * 1.2, 0.5, 1e-4, "2025-01-01T00:00:00+00:00")


def valid_table() -> dict[str, Any]:
    return export_table([entry(64), entry(128)], provenance={"host": "elsewhere"})


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "cache.db"
    with CacheStore.open(path) as store:
        store.put_winner(entry(256))
    return path


def invoke(*args: Any):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def mutate(path: list[Any], value: Any = None, *, delete: bool = False):
    def change(table: dict[str, Any]) -> None:
        target = table
        for step in path[:-1]:
            target = target[step]
        if delete:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


E0 = ["entries", 0]
CASES: list[tuple[Any, ...]] = [  # (id, raw text/bytes or a change to a valid table, *expected in the line)
    ("not-json", "{not json", "is not JSON"),
    ("empty-file", "", "is not JSON"),
    ("not-utf8", b"\xff\xfe\x00garbage", "not UTF-8"),
    ("nan-constant", '{"format_version": 1, "entries": [NaN]}', "NaN is not a valid JSON value"),
    ("deep-nesting", "[" * 100_000 + "]" * 100_000, "is not JSON"),
    ("duplicate-json-key", '{"format_version": 1, "format_version": 1, "entries": []}', "duplicate key"),
    ("top-level-array", "[]", "top level: expected an object"),
    ("missing-format-version", mutate(["format_version"], delete=True), "format_version: missing"),
    ("unknown-format-version", mutate(["format_version"], 99), "unsupported format_version 99"),
    ("format-version-text", mutate(["format_version"], "1"), "format_version: expected an integer"),
    ("entries-not-array", mutate(["entries"], {"0": {}}), "entries: expected an array"),
    ("missing-field", mutate([*E0, "median_us"], delete=True), "entries[0]: missing field median_us"),
    ("unknown-field", mutate([*E0, "fast"], True), "entries[0]: unknown field 'fast'"),
    ("batch-as-text", mutate([*E0, "batch"], "2"), "entries[0].batch: expected an integer"),
    ("causal-as-text", mutate([*E0, "causal"], "yes"), "entries[0].causal: expected true or false"),
    ("config-as-text", mutate([*E0, "config"], "BLOCK_M=64"), "entries[0].config: expected an object"),
    ("huge-int", mutate([*E0, "heads"], 10**40), "entries[0].heads: expected an integer"),
    ("negative-timing", mutate([*E0, "median_us"], -1.0), "entries[0].median_us: expected a positive finite"),
    ("zero-timing", mutate([*E0, "p95_us"], 0), "entries[0].p95_us: expected a positive finite"),
    ("absurd-timing", mutate([*E0, "p99_us"], 1e300), "entries[0].p99_us: expected at most"),
    ("p95-below-median", mutate([*E0, "p95_us"], 1.0), "entries[0].p95_us: must be >= median_us"),
    ("absurd-tflops", mutate([*E0, "tflops"], 1e12), "entries[0].tflops"),
    ("block-m-1e9", mutate([*E0, "config", "BLOCK_M"], 10**9), "entries[0].config.BLOCK_M"),
    ("long-gpu-name", mutate([*E0, "gpu"], "A" * 10_000), "entries[0].gpu", "a string of 10000 characters"),
    ("long-config-text", mutate([*E0, "config", "schedule"], "x" * 10_000), "entries[0].config.schedule"),
    ("long-config-key", mutate([*E0, "config", "k" * 10_000], 1), "entries[0].config: invalid key"),
    ("sql-in-kernel", mutate([*E0, "kernel"], SQL), "entries[0].kernel: expected only letters"),
    ("sql-in-kernel-hash", mutate([*E0, "kernel_hash"], SQL), "entries[0].kernel_hash"),
    ("sql-in-config", mutate([*E0, "config", "schedule"], SQL), "entries[0].config.schedule"),
    ("sql-in-dtype", mutate([*E0, "dtype"], SQL), "entries[0].dtype: expected one of"),
    ("control-chars", mutate([*E0, "gpu"], "H100\n\x1b[31mred"), "entries[0].gpu"),
    ("bad-timestamp", mutate([*E0, "created_at"], "yesterday"), "entries[0].created_at"),
    ("duplicate-entry", lambda t: t["entries"].append(copy.deepcopy(t["entries"][0])), "entries[2]: duplicate key"),
    ("bad-second-entry", mutate(["entries", 1, "seq_len"], 0), "entries[1].seq_len"),
]


@pytest.mark.parametrize("name, hostile, needles", [(c[0], c[1], c[2:]) for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("replace", [False, True], ids=["keep", "replace"])
def test_hostile_table_is_one_line_and_writes_nothing(db, tmp_path, name, hostile, needles, replace):
    path = tmp_path / "table.json"
    if isinstance(hostile, bytes):
        path.write_bytes(hostile)
    elif isinstance(hostile, str):
        path.write_text(hostile)
    else:
        table = valid_table()
        hostile(table)
        path.write_text(json.dumps(table))
    before = db.read_bytes()
    result = invoke("import", path, "--db", db, *(["--replace"] if replace else []))
    assert_one_line_error(result, *needles)
    assert db.read_bytes() == before
    assert not Path(f"{db}-wal").exists()


def test_valid_table_does_change_the_cache(db, tmp_path):
    # the control for the byte comparisons above: a good import is visible in the file
    path = tmp_path / "table.json"
    path.write_text(json.dumps(valid_table()))
    before = db.read_bytes()
    result = invoke("import", path, "--db", db)
    assert result.exit_code == 0, result.output
    assert db.read_bytes() != before
    with CacheStore.open(db) as store:
        assert len(store.winners()) == 3


def test_sql_text_where_free_text_is_allowed_is_stored_verbatim(db, tmp_path):
    table = valid_table()
    table["entries"][0]["gpu"] = SQL
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    assert invoke("import", path, "--db", db).exit_code == 0
    with CacheStore.open(db) as store:
        assert [e.key.gpu for e in store.winners(gpu=SQL)] == [SQL]
        assert len(store.winners()) == 3  # the winners table is still there, with every row
    assert invoke("show", "--db", db).exit_code == 0


# -- a cache file that is not one -------------------------------------------------------------------------------


def _not_sqlite(path: Path) -> None:
    path.write_text("this is a text file, not a database\n" * 200)


def _corrupted(path: Path) -> None:
    with CacheStore.open(path) as store:
        store.put_winner(entry(64))
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page: 3 * page] = bytes([0x5A]) * (2 * page)  # the winners table's pages
    path.write_bytes(bytes(data))


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.commit()
    conn.close()


BAD_FILES = {"not-sqlite": _not_sqlite, "corrupted": _corrupted, "foreign": _foreign}
COMMANDS = {
    "show": ["show"],
    "export": ["export", "--format", "json"],
    "import": ["import", "{table}"],
    "sweep": ["sweep", "--gpu", "cpu", "--grid", "smoke", "--trials", "1"],
    "validate": ["validate", "--gpu", "cpu"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_cache_file_is_one_clear_line_for_every_command(tmp_path, kind, command):
    path = tmp_path / "bad.db"
    BAD_FILES[kind](path)
    table = tmp_path / "table.json"
    table.write_text(json.dumps(valid_table()))
    before = path.read_bytes()
    args = [a.replace("{table}", str(table)) for a in COMMANDS[command]]
    result = invoke(*args, "--db", path)
    assert_one_line_error(result, str(path), "is not a FlashCore cache")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.db", "table.json"]  # no journal, claims or WAL


# -- no code execution from data --------------------------------------------------------------------------------


def test_no_pickle_eval_or_exec_in_the_cache_or_the_import_path():
    sources = sorted((ROOT / "cache").glob("*.py")) + [ROOT / "autotune" / "cli" / "tables.py",
                                                       ROOT / "autotune" / "cli" / "app.py",
                                                       ROOT / "autotune" / "runtime" / "dispatch.py"]
    forbidden = re.compile(r"\b(pickle|cPickle|marshal|shelve|dill)\b|(?<![.\w])(eval|exec|compile|__import__)\s*\(|"
                           r"yaml\.(unsafe_)?load\b|execute_plugins\s*=\s*True")
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in sources
            for n, line in enumerate(p.read_text().splitlines(), 1) if forbidden.search(line)]
    assert not hits, hits
    assert len(sources) >= 7
