"""The CLI through typer's CliRunner: a real smoke sweep, show, export and import, and one-line errors."""

import json

import pytest
from typer.testing import CliRunner

from flashcore.autotune.cli.app import app
from flashcore.cache import CacheStore

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    db = tmp_path_factory.mktemp("sweep") / "cache.db"
    result = invoke("sweep", "--gpu", "cpu", "--grid", "smoke", "--trials", "2", "--db", db)
    assert result.exit_code == 0, result.output
    return db, result


def test_smoke_sweep_writes_winners_and_prints_them(swept):
    db, result = swept
    assert "winners" in result.output and "B1-H3-S77-D64-causal-float16" in result.output
    with CacheStore.open(db) as store:
        winners = store.winners()
        assert len(winners) == 3
        assert all(w.rel_err < 2e-3 for w in winners)
        assert len(store.trials()) >= 6


def test_show_lists_winners_as_served(swept):
    result = invoke("show", "--db", swept[0])
    assert result.exit_code == 0
    assert "3 cached winners" in result.output and "stale" not in result.output


def test_export_import_round_trip(swept, tmp_path):
    out = tmp_path / "table.json"
    assert invoke("export", "--db", swept[0], "--format", "json", "-o", out).exit_code == 0
    table = json.loads(out.read_text())
    assert table["format_version"] == 2 and len(table["entries"]) == 3
    assert {"gpu", "kernel", "config", "median_us", "p99_us", "kernel_hash"} <= set(table["entries"][0])
    other = tmp_path / "other.db"
    result = invoke("import", out, "--db", other)
    assert result.exit_code == 0, result.output
    again = tmp_path / "again.json"
    invoke("export", "--db", other, "-o", again)
    assert json.loads(again.read_text())["entries"] == table["entries"]


def test_export_csv_to_stdout(swept):
    result = invoke("export", "--db", swept[0], "--format", "csv")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 0 and lines[0].startswith("gpu,") and len(lines) == 4


def test_env_var_names_the_default_db(swept, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_DB", str(swept[0]))
    assert "3 cached winners" in invoke("show").output


@pytest.mark.parametrize("args, message", [
    (["sweep", "--gpu", "h100"], "needs an NVIDIA H100"),
    (["sweep", "--gpu", "tpu"], "unknown GPU profile"),
    (["sweep", "--gpu", "cpu", "--grid", "huge"], "unknown grid"),
    (["sweep", "--gpu", "cpu", "--dtype", "float64"], "unsupported dtype"),
    (["export", "--format", "xml"], "unknown format"),
    (["show", "--db", "/nonexistent/x.db"], "no cache at"),
    (["import", "/nonexistent/t.json"], "t.json"),
], ids=["h100-without-gpu", "bad-profile", "bad-grid", "bad-dtype", "bad-format", "no-db", "no-file"])
def test_domain_errors_are_one_line_and_exit_1(args, message, swept):
    if args[0] == "export":
        args = [*args, "--db", str(swept[0])]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_import_of_a_bad_table_writes_nothing(swept, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format_version": 1, "entries": [{"gpu": "x"}]}))
    before = swept[0].read_bytes()
    result = runner.invoke(app, ["import", str(bad), "--db", str(swept[0])])
    assert result.exit_code == 1 and "entries[0]" in result.output
    assert swept[0].read_bytes() == before


def test_every_command_has_help():
    import typer.main

    group = typer.main.get_command(app)
    assert set(group.commands) >= {"sweep", "show", "export", "import"}
    for name, command in group.commands.items():
        assert command.help, f"{name} has no help"
        result = invoke(name, "--help")
        assert result.exit_code == 0 and "Usage" in result.output
        for param in command.params:
            if param.name != "help":
                assert getattr(param, "help", None), f"{name} --{param.name} has no help"


def test_python_dash_m_works():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "flashcore.autotune", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "sweep" in out.stdout


def test_sweep_from_misses_tunes_the_missed_shapes(tmp_path):
    from flashcore.autotune import clear_cache, get_kernel

    db = tmp_path / "m.db"
    invoke("sweep", "--gpu", "cpu", "--grid", "smoke", "--trials", "1", "--db", db)
    clear_cache()
    assert get_kernel((1, 2, 40, 32), causal=True, db=db).source == "nearest"   # a miss, recorded
    result = invoke("misses", "--db", db)
    assert result.exit_code == 0 and "1 missed shapes" in result.output
    result = invoke("sweep", "--gpu", "cpu", "--from-misses", "--trials", "1", "--db", db)
    assert result.exit_code == 0, result.output
    clear_cache()
    assert get_kernel((1, 2, 40, 32), causal=True, db=db).source == "exact"


def test_sweep_from_misses_without_misses_is_one_line(tmp_path):
    result = runner.invoke(app, ["sweep", "--gpu", "cpu", "--from-misses", "--db", str(tmp_path / "n.db")])
    assert result.exit_code == 1 and "no lookup misses" in result.output
