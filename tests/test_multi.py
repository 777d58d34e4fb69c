"""Sweeps across several devices and hosts: `sweep --devices` (one worker process per device, one cache) and
`sweep --storage URL` (the Optuna studies in a shared database, here a PostgreSQL server this test starts).

Everything runs real ``python -m flashcore.autotune`` processes in Triton's interpreter (``--gpu cpu``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashcore.autotune.cli.multi import parse_devices, worker_args
from flashcore.autotune.core.errors import AutotuneError
from flashcore.autotune.tuning.storage import make_storage
from flashcore.autotune.cli.app import app

import _procs
from _procs import ROOT, child_env, rows

SMOKE_POINTS = 3
runner = CliRunner()


def sweep_cmd(db: Path, *extra: str) -> list[str]:
    return _procs.sweep_cmd(db, "--trials", "2", *extra)


# -- --devices -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_device_workers_finish_the_grid_each_point_once(tmp_path):
    db = tmp_path / "multi.db"
    proc = subprocess.run(sweep_cmd(db, "--devices", "0,1"), cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err_lines = proc.stderr.splitlines()
    assert any(line.startswith("[gpu 0] sweep:") for line in err_lines), proc.stderr
    assert any(line.startswith("[gpu 1] sweep:") for line in err_lines), proc.stderr
    assert proc.stdout.count("winners") == 1  # the parent's table, once; the workers print none

    winners = rows(db, "SELECT key_id FROM winners")
    assert len(winners) == SMOKE_POINTS and len(set(winners)) == SMOKE_POINTS
    trials = rows(db, "SELECT key_id, config, json_extract(extra, '$.process') FROM trials WHERE status != 'invalid'")
    assert {k for k, _, _ in trials} == {k for (k,) in winners}
    pairs = [(k, c) for k, c, _ in trials]
    assert len(pairs) == len(set(pairs)), "a (key, config) was measured twice"
    by_key: dict[str, set[str]] = {}
    for k, _, process in trials:
        by_key.setdefault(k, set()).add(process)
    assert all(len(p) == 1 for p in by_key.values()), by_key  # each point tuned by one worker
    assert len({p for ps in by_key.values() for p in ps}) <= 2

    # the parent's table is the one a single-process sweep prints: per point and candidate the same trial counts
    # (ok/fail/invalid: the seeded studies propose the same configs) and marks, each point with its winner
    table = table_rows(proc.stdout)
    single = subprocess.run(sweep_cmd(tmp_path / "single.db"), cwd=ROOT, env=child_env(), capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    expected = table_rows(single.stdout)
    assert len(table) == SMOKE_POINTS and {k: v[1:] for k, v in table.items()} == {
        k: v[1:] for k, v in expected.items()}, (table, expected)
    assert all(row[0] != "-" and row[2] == "served own" for row in table.values()), table
    ok = dict(rows(db, "SELECT key_id, count(*) FROM trials WHERE status = 'ok' GROUP BY key_id"))
    assert sorted(int(row[1].split("/")[0]) for row in table.values()) == sorted(ok.values())


def table_rows(stdout: str) -> dict[tuple[str, str], tuple[str, str, str]]:
    """The winners table's rows: (point, candidate) -> (median µs, ok/fail/invalid, note)."""
    out = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 8 and cells[0] != "point":
            out[(cells[0], cells[1])] = (cells[3], cells[6], cells[7])
    return out


@pytest.mark.parametrize("value", ["", "a", "0,0", "1,-1", "0,,1", "0;1"])
def test_bad_devices_exit_1_with_one_line(tmp_path, value):
    res = runner.invoke(app, ["sweep", "--gpu", "cpu", "--db", str(tmp_path / "x.db"), "--devices", value])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --devices"), res.output
    assert not (tmp_path / "x.db").exists()  # nothing started


def test_parse_devices_against_the_device_count():
    assert parse_devices("0, 1,3", device_count=None) == [0, 1, 3]
    assert parse_devices("1,0", device_count=2) == [1, 0]
    for value in ("0,1,2", "2"):
        with pytest.raises(AutotuneError, match="visible CUDA device"):
            parse_devices(value, device_count=2)


def test_worker_args_round_trip_through_the_cli():
    args = worker_args(gpu="cpu", grid="smoke", trials=3, db=Path("/x/c.db"), seed=4, dtype="bfloat16", retune=True,
                       kernels=("attention_fwd", "sdpa_cudnn"), rep_ms=50, from_misses=False, patience=5, min_improvement=0.05,
                       time_budget=30.0, storage="journal:/x/j.log")
    assert "--devices" not in args
    import typer.main

    # the worker's command line parses back to the same values (an unknown or malformed option would raise)
    click_cmd = typer.main.get_command(app).commands["sweep"]  # type: ignore[attr-defined]
    ctx = click_cmd.make_context("sweep", list(args))
    p = ctx.params
    assert (p["gpu"], p["grid"], p["trials"], p["seed"], p["dtype"], p["retune"], p["rep_ms"], p["patience"],
            p["min_improvement"], p["time_budget"], p["storage"], p["devices"]) == (
        "cpu", "smoke", 3, 4, "bfloat16", True, 50, 5, 0.05, 30.0, "journal:/x/j.log", None)
    assert str(p["db"]) == "/x/c.db" and p["kernel"] == "attention_fwd,sdpa_cudnn"


# -- --storage -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["nonsense", "journal:"])
def test_bad_storage_exits_1_with_one_line(tmp_path, url):
    res = runner.invoke(app, ["sweep", "--gpu", "cpu", "--db", str(tmp_path / "x.db"), "--storage", url])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --storage"), res.output


@pytest.mark.slow
def test_journal_storage_takes_the_studies(tmp_path):
    import optuna

    db, journal = tmp_path / "c.db", tmp_path / "studies.log"
    proc = subprocess.run(sweep_cmd(db, "--trials", "1", "--grid", "smoke", "--storage", f"journal:{journal}"),
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not Path(f"{db}.optuna.log").exists() and journal.exists()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    summaries = optuna.get_all_study_summaries(JournalStorage(JournalFileBackend(str(journal))))
    keys = {k for (k,) in rows(db, "SELECT key_id FROM winners")}
    assert len(summaries) == SMOKE_POINTS and {s.study_name.split("-seed")[0] for s in summaries} == keys


# -- a PostgreSQL server of the test's own ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url(request):
    """A throwaway PostgreSQL cluster on a free localhost port: its URL; stopped and removed afterwards."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (shutil.which("postgres") and initdb and pg_ctl):
        pytest.skip("no PostgreSQL server binaries (postgres, initdb, pg_ctl) on PATH")
    pytest.importorskip("psycopg2", reason="no PostgreSQL driver: pip install psycopg2-binary")
    run_as: dict = {}
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run the PostgreSQL server as")
        run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    base = Path(tempfile.mkdtemp(prefix="flashcore-pg-"))  # not tmp_path: its parents are private to root
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    if run_as:
        os.chown(base, run_as["user"], run_as["group"])
    data, port = base / "data", _free_port()

    def pg(*args, **kw):
        return subprocess.run(list(args), capture_output=True, text=True, timeout=60, cwd=base, **run_as, **kw)

    out = pg(initdb, "-D", str(data), "-U", "flashcore", "-A", "trust", "--no-sync", "-E", "UTF8")
    if out.returncode:
        pytest.skip(f"initdb failed: {out.stderr.strip()[-300:]}")
    out = pg(pg_ctl, "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "30", "-o",
             f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    request.addfinalizer(lambda: pg(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"))
    if out.returncode:
        log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
        pytest.fail(f"pg_ctl start failed: {out.stderr.strip()} {log[-500:]}")
    return f"postgresql://flashcore@127.0.0.1:{port}/postgres"


@pytest.mark.slow
def test_postgres_storage_takes_the_studies(tmp_path, postgres_url):
    import optuna

    db = tmp_path / "hostA.db"
    proc = subprocess.run(sweep_cmd(db, "--trials", "1", "--storage", postgres_url), cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not Path(f"{db}.optuna.log").exists()  # not the default journal
    studies = {k: s for (k, s) in rows(db, "SELECT key_id, study FROM trials")}
    assert len(studies) == SMOKE_POINTS
    storage = make_storage(postgres_url)  # an RDBStorage, with the installed driver (psycopg or psycopg2)
    assert type(storage).__name__ == "RDBStorage"
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    assert set(studies.values()) <= set(summaries)
    for name in studies.values():
        study = optuna.load_study(study_name=name, storage=storage)
        assert len(study.trials) >= 1 and study.best_value > 0

    # a second host's sweep resumes the same studies: nothing left to run at trials=1
    res = runner.invoke(app, ["sweep", "--gpu", "cpu", "--grid", "smoke", "--trials", "1", "--db", str(db),
                              "--storage", postgres_url.replace("flashcore@", "flashcore:secret@")])
    assert res.exit_code == 0, res.output
    assert "secret" not in res.output and "flashcore:***@" in res.output


@pytest.mark.slow
def test_unreachable_postgres_is_one_line(tmp_path):
    pytest.importorskip("psycopg2", reason="no PostgreSQL driver: pip install psycopg2-binary")
    url = f"postgresql://nobody:pw@127.0.0.1:{_free_port()}/optuna"
    res = runner.invoke(app, ["sweep", "--gpu", "cpu", "--db", str(tmp_path / "x.db"), "--storage", url])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --storage: cannot open"), res.output
    assert "pw" not in lines[0].replace("postgresql", "")
