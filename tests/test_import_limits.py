"""`autotune import` takes a table of at most 20,000 entries unless --max-entries says more (up to the format's
100,000): a larger one is refused in one line naming the limit and the override, before any entry is validated,
and nothing is written. A table just under the bound imports in seconds and serves its first get_kernel."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashcore.autotune import Point
from flashcore.autotune.cli.app import IMPORT_MAX_ENTRIES, TABLE_MAX_ENTRIES, app
from flashcore.autotune.core.toolchain import make_key, now_iso
from flashcore.cache import CacheStore, Entry, TableTooLarge, entry_to_dict, parse_table
from flashcore.kernels import get_family

from _shapes import fwd_config

ROOT = Path(__file__).resolve().parents[1]


def template() -> dict:
    """One valid row: attention_fwd on the interpreter, a config every small point can run."""
    key = make_key(Point(1, 1, 1, 64), get_family("attention_fwd"), "cpu-interpreter", "cpu")
    config = fwd_config(BLOCK_M=16, BLOCK_N=16, num_warps=2, CAUSAL_SPLIT=False)
    return entry_to_dict(Entry(key, config, 1.0, 1.0, 1.0, 1.0, 1e-4, now_iso()))


def write_table(path: Path, n: int) -> Path:
    """A table of ``n`` valid entries with distinct keys (batch, heads, length vary), written compactly."""
    row, rows = template(), []
    for i in range(n):
        r = copy.copy(row)
        r["batch"], r["heads"], r["seq_len"] = 1 + i % 50, 1 + (i // 50) % 40, 1 + i // 2000
        r["kv_heads"], r["kv_len"] = r["heads"], r["seq_len"]
        rows.append(r)
    path.write_text(json.dumps({"format_version": 2, "entries": rows}, separators=(",", ":")))
    return path


def invoke(*args):
    return CliRunner().invoke(app, ["import", *map(str, args)])


def one_line(done) -> str:
    lines = [ln for ln in done.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in done.output, done.output
    return lines[0]


def nothing_written(db: Path) -> bool:
    if not db.exists():
        return True
    with CacheStore.open(db) as store:
        return not store.winners()


def test_the_cli_bounds_are_the_formats():
    assert IMPORT_MAX_ENTRIES == 20_000 and TABLE_MAX_ENTRIES == 100_000
    with pytest.raises(TableTooLarge) as caught:  # counted before any entry is read: {} entries are not looked at
        parse_table({"format_version": 2, "entries": [{}] * (TABLE_MAX_ENTRIES + 1)})
    assert (caught.value.entries, caught.value.limit, caught.value.hard) == (TABLE_MAX_ENTRIES + 1, TABLE_MAX_ENTRIES,
                                                                            True)


def test_a_table_over_the_default_bound_is_refused_in_one_line(tmp_path):
    table = write_table(tmp_path / "big.json", IMPORT_MAX_ENTRIES + 1)
    db = tmp_path / "team.db"
    done = invoke(table, "--db", db)
    assert done.exit_code == 1, done.output
    line = one_line(done)
    assert f"holds {IMPORT_MAX_ENTRIES + 1} entries, more than the {IMPORT_MAX_ENTRIES}" in line, line
    assert f"--max-entries {IMPORT_MAX_ENTRIES + 1}" in line and line.endswith("nothing imported"), line
    assert nothing_written(db)


def test_max_entries_lowers_and_raises_the_bound(tmp_path):
    table = write_table(tmp_path / "t.json", 3)
    db = tmp_path / "team.db"
    done = invoke(table, "--db", db, "--max-entries", 2)
    assert done.exit_code == 1 and "more than the 2 " in one_line(done) and "--max-entries 3" in one_line(done)
    assert nothing_written(db)
    done = invoke(table, "--db", db, "--max-entries", 3)
    assert done.exit_code == 0, done.output
    with CacheStore.open(db) as store:
        assert len(store.winners()) == 3


def test_the_count_is_checked_before_the_entries(tmp_path):
    # entries that are not even objects: the size refusal comes first, naming no entry
    path = tmp_path / "junk.json"
    path.write_text(json.dumps({"format_version": 2, "entries": [1, 2, 3]}))
    done = invoke(path, "--db", tmp_path / "team.db", "--max-entries", 2)
    assert done.exit_code == 1 and "holds 3 entries" in one_line(done) and "entries[" not in done.output


@pytest.mark.parametrize("value", [0, TABLE_MAX_ENTRIES + 1])
def test_max_entries_out_of_range_is_a_usage_error(tmp_path, value):
    done = invoke(write_table(tmp_path / "t.json", 1), "--db", tmp_path / "team.db", "--max-entries", value)
    assert done.exit_code == 2, done.output
    assert not (tmp_path / "team.db").exists()


def test_over_the_formats_own_limit_says_split_it(tmp_path, monkeypatch):
    import flashcore.cache.table_format as tables  # the format's bound made small, to test the message cheaply

    monkeypatch.setattr(tables, "MAX_ENTRIES", 2)
    done = invoke(write_table(tmp_path / "t.json", 3), "--db", tmp_path / "team.db", "--max-entries", 5)
    line = one_line(done)
    assert done.exit_code == 1 and "more than the 2 " in line and "split it" in line and "--max-entries" not in line
    assert nothing_written(tmp_path / "team.db")


_MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    from flashcore.autotune.cli.app import main
    t0 = time.perf_counter()
    try:
        main(["import", sys.argv[1], "--db", sys.argv[2]])
    except SystemExit as exc:
        assert not exc.code, exc.code
    t1 = time.perf_counter()
    import torch
    from flashcore.autotune import get_kernel
    t2 = time.perf_counter()
    kernel = get_kernel((7, 3, 5, 64), torch.float16, False, gpu="cpu", db=sys.argv[2])
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "get_kernel_s": t3 - t2, "source": kernel.source,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


@pytest.mark.slow
def test_a_table_just_under_the_bound_imports_in_seconds(tmp_path):
    """20,000 entries (all of one GPU, mask and head dim: one group that get_kernel's nearest lookup scans): the
    import and the first get_kernel, in a fresh process. Measured on a loaded 2-core machine: 8 s and 358 MB
    peak (276 MB of it torch and the kernels), the first get_kernel 1.7 s; the bounds below leave 4x or more."""
    table = write_table(tmp_path / "near.json", IMPORT_MAX_ENTRIES)
    db = tmp_path / "team.db"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(table), str(db)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nimport of {IMPORT_MAX_ENTRIES} entries: {figures}")
    assert f"imported {IMPORT_MAX_ENTRIES} of {IMPORT_MAX_ENTRIES}" in proc.stderr
    assert figures["source"] == "exact"  # (7, 3, 5, 64) is one of the rows
    assert figures["import_s"] < 60 and figures["peak_rss_mb"] < 1500 and figures["get_kernel_s"] < 15, figures
