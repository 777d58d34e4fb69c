"""What the command line says is true and readable: bad cache rows end in one line each, output files never create
folders, `validate --no-shipped` exists, exported provenance has no "None" strings, --help wraps between words."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashcore.autotune.cli.app import app
from flashcore.autotune.core.problem import Point
from flashcore.autotune.core.profiles import CPU_GPU_NAME
from flashcore.autotune.core.toolchain import make_key, now_iso
from flashcore.cache import CacheStore, Entry
from flashcore.kernels import get_family
from flashcore.kernels import load_space

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
CONFIG = {**dict(load_space("attention_fwd", "cpu").default), "BLOCK_M": 16, "BLOCK_N": 16, "CAUSAL_SPLIT": False}
POINTS = [Point(1, 1, 16 + i, 16) for i in range(5)]  # two stay good, three are damaged below
DAMAGE = {
    POINTS[1]: ("batch", "abc", "batch: expected an integer"),
    POINTS[2]: ("head_dim", "x", "head_dim: expected an integer"),
    POINTS[3]: ("config", "[" * 100_000 + "]" * 100_000, "nested too deep"),
}


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    """A cache of five winners this machine serves (the interpreter), three of whose rows are damaged: a batch
    and a head dim stored as text, a config nested 100 000 deep (a JSON depth bomb)."""
    db = tmp_path / "damaged.db"
    family = get_family("attention_fwd")
    keys = {p: make_key(p, family, CPU_GPU_NAME, "cpu") for p in POINTS}
    with CacheStore.open(db) as store:
        for key in keys.values():
            store.put_winner(Entry(key, CONFIG, 10.0, 11.0, 12.0, 1.0, 1e-4, now_iso()))
    conn = sqlite3.connect(db)
    with conn:
        for point, (column, value, _) in DAMAGE.items():
            conn.execute(f"UPDATE winners SET [{column}] = ? WHERE key_id = ?", [value, keys[point].id])
    conn.close()
    return db


def test_show_ends_each_bad_row_with_one_line_and_lists_the_others(damaged: Path) -> None:
    result = invoke("show", "--db", damaged)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3, result.output
    for _, _, message in DAMAGE.values():
        assert sum(message in line for line in warnings) == 1, (message, warnings)
    words = " ".join(result.output.split())  # the table's title wraps at the table's width
    assert "2 cached winners" in words and "3 unreadable row(s) skipped" in words
    for point in (POINTS[0], POINTS[4]):
        assert point.label in result.output


@pytest.mark.slow
def test_validate_ends_each_bad_row_with_one_line_and_gates_the_others(damaged: Path) -> None:
    result = invoke("validate", "--gpu", "cpu", "--no-shipped", "--db", damaged)
    assert result.exit_code == 1, result.output  # rows it could not read: not all is well
    assert "Traceback" not in result.output
    skipped = [line for line in result.output.splitlines() if "skipped:" in line]
    assert len(skipped) == 3, result.output
    for _, _, message in DAMAGE.values():
        assert sum(message in line for line in skipped) == 1, (message, skipped)
    assert "2 served winners" in result.output and "all 2 served winners pass the gate" in result.output
    assert "3 unreadable row(s)" in result.output


def test_validate_no_shipped_validates_the_cache_only(tmp_path: Path) -> None:
    result = invoke("validate", "--gpu", "cpu", "--no-shipped", "--db", tmp_path / "none.db")
    assert result.exit_code == 1, result.output  # an option it knows (not 2), and there is nothing to validate
    assert result.output.strip().splitlines() == [f"error: no cache at {tmp_path / 'none.db'} (run `autotune "
                                                  "sweep` first, or pass --db)"]
    assert not (tmp_path / "none.db").exists()


# -- output files: no folder is ever created -----------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["bench", "--gpu", "cpu", "--grid", "smoke", "--out", "{missing}/b.json"],
    ["bench", "--gpu", "cpu", "--grid", "smoke", "--plot", "{missing}/b.png"],
    ["bench", "--gpu", "cpu", "--grid", "smoke", "--dtype", "fp8", "--out", "{missing}/b.json"],
    ["study-search", "--gpu", "cpu", "--grid", "smoke", "--plot", "{missing}/s.png"],
], ids=["bench-out", "bench-plot", "bench-fp8-out", "study-plot"])
def test_an_output_in_a_missing_folder_is_one_line_and_creates_nothing(args, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AUTOTUNE_DB", str(tmp_path / "c.db"))
    missing = tmp_path / "no" / "such" / "dir"
    result = invoke(*(a.replace("{missing}", str(missing)) for a in args))
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the folder") and "does not exist" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder, no cache, nothing


@pytest.mark.slow
def test_bench_json_provenance_has_json_null_not_the_text_none(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    assert invoke("sweep", "--gpu", "cpu", "--grid", "smoke", "--trials", "1", "--db", db).exit_code == 0
    out = tmp_path / "b.json"
    result = invoke("bench", "--gpu", "cpu", "--grid", "smoke", "--db", db, "--out", out)
    assert result.exit_code == 0, result.output
    prov = json.loads(out.read_text())["provenance"]
    assert "None" not in prov.values() and prov["cuda"] is None  # a CPU build of torch has no CUDA
    assert all(r["label"] in result.output for r in json.loads(out.read_text())["points"])  # labels whole
    exported = tmp_path / "t.json"
    assert invoke("export", "--db", db, "-o", exported).exit_code == 0
    assert "None" not in json.loads(exported.read_text())["provenance"].values()
    assert invoke("import", exported, "--db", tmp_path / "again.db").exit_code == 0  # and it imports back


# -- --help ---------------------------------------------------------------------------------------------------------

COMMANDS = ["", "sweep", "bench", "study-search", "validate", "show", "export", "import", "misses", "merge"]


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_wraps_between_words_at_the_terminal_width(command: str, columns: int, monkeypatch, capsys) -> None:
    from flashcore.autotune.cli import main  # the console script itself (CliRunner forces 80 columns)

    monkeypatch.setenv("COLUMNS", str(columns))
    with pytest.raises(SystemExit) as exit_:
        main([*([command] if command else []), "--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0, text
    assert not re.search(r"<(bool|str|int|float|path|list)", text), text  # no type labels, flags included
    assert "…" not in text and "│" not in text  # nothing cut, no boxes
    width = min(columns, 120) - 2
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), [line for line in lines if len(line) > width]
    for a, b in zip(lines, lines[1:]):
        if not a.strip() or not b.strip() or b.lstrip().startswith(("-", "[")) or len(b) - len(b.lstrip()) <= 2:
            continue  # a new paragraph or row, not the continuation of a wrapped line
        if a.lstrip().startswith("-") and "  " not in a.strip():
            continue  # an option too long for the first column: its help starts on the next line
        assert not a.rstrip().endswith("-") or a.rstrip().endswith(" -"), f"a word split after its hyphen:\n{a}\n{b}"
        first = b.split()[0]
        assert len(a) + 1 + len(first) > width, f"a line broken before the terminal's width:\n{a}\n{b}"


# -- the interpreter guard names the modules that hold the kernels ------------------------------------------------


def test_the_interpreter_guard_names_every_module_with_jit_kernels() -> None:
    from flashcore.kernels.interpreter import jit_modules

    with_kernels = {".".join(("flashcore", *p.relative_to(ROOT).with_suffix("").parts))
                    for p in (ROOT / "kernels").rglob("*.py")
                    if re.search(r"^@(triton|gluon)\.jit", p.read_text(encoding="utf-8"), re.M)}
    assert with_kernels and set(jit_modules()) == with_kernels
