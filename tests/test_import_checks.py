"""`autotune import` refuses a table holding a config its kernel family cannot run, naming the entry, and writes
nothing: the same check get_kernel applies to a cache row before serving it (runtime.index.unusable_reason)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flashcore.autotune import Point
from flashcore.autotune.cli.app import app
from flashcore.autotune.core.toolchain import make_key, now_iso
from flashcore.cache import CacheStore, Entry, write_json
from flashcore.kernels import get_family

from _shapes import fwd_config

POINT = Point(3, 5, 77, 64, True)


def table(tmp_path, config) -> str:
    key = make_key(POINT, get_family("attention_fwd"), "cpu-interpreter", "cpu")
    good = Entry(make_key(Point(1, 3, 50, 64), get_family("attention_fwd"), "cpu-interpreter", "cpu"),
                 fwd_config(BLOCK_M=16, BLOCK_N=16, num_warps=2, CAUSAL_SPLIT=False), 1.0, 1.0, 1.0, 1.0, 1e-4,
                 now_iso())
    bad = Entry(key, config, 1.0, 1.0, 1.0, 1.0, 1e-4, now_iso())
    path = tmp_path / "t.json"
    write_json([good, bad], path, provenance={"gpu": "cpu-interpreter"})
    return str(path)


@pytest.mark.parametrize("config", [
    fwd_config(BLOCK_M=32, UNKNOWN=1),
    fwd_config(BLOCK_M=4096),
    fwd_config(num_warps=0),
    {k: v for k, v in fwd_config().items() if k != "BLOCK_M"},
    {},
    fwd_config(BLOCK_M="32"),
], ids=["unknown-key", "block-4096", "warps-0", "block-missing", "empty", "string"])
def test_a_table_with_a_config_the_kernel_cannot_run_is_refused(tmp_path, config):
    db = tmp_path / "team.db"
    done = CliRunner().invoke(app, ["import", table(tmp_path, config), "--db", str(db)])
    assert done.exit_code == 1, done.output
    lines = [ln for ln in done.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "entry 2" in lines[0] and "nothing imported" in lines[0], done.output
    assert "Traceback" not in done.output
    assert not db.exists() or not CacheStore.open(db).winners()


def test_a_valid_table_imports(tmp_path):
    db = tmp_path / "team.db"
    done = CliRunner().invoke(app, ["import", table(tmp_path, fwd_config(BLOCK_M=32, BLOCK_N=16, num_warps=2)),
                                    "--db", str(db)])
    assert done.exit_code == 0, done.output
    with CacheStore.open(db) as store:
        assert len(store.winners()) == 2
