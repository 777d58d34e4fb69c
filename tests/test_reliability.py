"""A sweep that survives crashing and hanging configs, kill -9, concurrent writers and stale or bad winners.

Everything here is real: a segfaulting Triton kernel (the fault-injection family), a launcher that hangs or
calls os._exit in the spawned worker (imported there from this module, which pytest puts on sys.path), real
``python -m flashcore.autotune`` processes killed with SIGKILL or run three at once on one cache file.
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashcore.autotune import PROFILES, Point, get_kernel
from flashcore.autotune.tuning.sweep import sweep, tune_point
from flashcore.autotune.core.toolchain import make_key
from flashcore.autotune.tuning.worker import PointClaim, TrialWorker
from flashcore.autotune.cli.app import app
from flashcore.cache import CacheStore, Entry
from flashcore.kernels import KernelFamily, get_family
from fault_family import FAMILY as FAULTY_FAMILY
from flashcore.kernels import load_space
from flashcore.autotune.tuning.options import Hooks, SweepOptions

from _shapes import fwd_config

from _procs import ROOT, child_env, rows, sweep_cmd

CPU = PROFILES["cpu"]
SMOKE_POINTS = 3
SPACE = load_space("attention_fwd", "cpu")
runner = CliRunner()


# -- launchers the spawned worker imports from this module -----------------------------------------------------


def misbehaving_launch(q, k, v, config, **kw):
    """Hangs on BLOCK_M=32 BLOCK_N=16, dies by os._exit(3) on BLOCK_M=32 BLOCK_N=64, else the real kernel."""
    tile = (config["BLOCK_M"], config["BLOCK_N"])
    if tile == (32, 16):
        time.sleep(3600)
    if tile == (32, 64):
        os._exit(3)
    from flashcore.kernels.attention_fwd.launch import attention_fwd

    return attention_fwd(q, k, v, config, **kw)


def unwritten_launch(q, k, v, config, *, out=None, **kw):
    """Never writes its output: every config fails the gate."""
    return out


def _family(name: str, launcher: str) -> KernelFamily:
    return dataclasses.replace(get_family("attention_fwd"), name=name, launcher=f"test_reliability:{launcher}")


MISBEHAVING = _family("attention_fwd_misbehaving", "misbehaving_launch")
UNWRITTEN = _family("attention_fwd_unwritten", "unwritten_launch")


def cli(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


# -- trial isolation -------------------------------------------------------------------------------------------


def test_segfaulting_config_is_recorded_and_the_sweep_goes_on(monkeypatch):
    monkeypatch.setenv("FLASHCORE_FAULT_INJECTION", "1")
    points = [Point(1, 1, 20, 32), Point(1, 1, 20, 32, True)]  # the faulting config (the default) is in both
    with CacheStore.memory() as store:
        results = sweep(points, store, SweepOptions(profile=CPU, trials=2, kernels=("attention_fwd_faulty",)))
        for r in results:
            crashed = [t for t in r.trials if t.status == "crashed"]
            assert [t.config for t in crashed] == [SPACE.default_for(r.point, CPU)], r.trials
            assert "signal SIGSEGV" in crashed[0].reason and crashed[0].median_us is None
            assert r.best is not None and r.best.status == "ok"  # the point is still tuned
        assert len(store.winners()) == 2 and len(store.trials()) == sum(len(r.trials) for r in results)


def test_hang_times_out_and_exit_crashes_each_ending_one_trial():
    point = Point(1, 1, 40, 32)  # 6 valid configs: one hangs, one calls os._exit(3)
    with CacheStore.memory() as store:
        res = tune_point(point, store, SweepOptions(profile=CPU, trials=6, trial_timeout_s=4), kernel=MISBEHAVING)
    by_status = collections.defaultdict(list)
    for t in res.trials:
        by_status[t.status].append(t)
    assert {s: len(ts) for s, ts in by_status.items()} == {"timeout": 1, "crashed": 1, "ok": 4}
    assert (by_status["timeout"][0].config["BLOCK_N"], by_status["crashed"][0].config["BLOCK_N"]) == (16, 64)
    assert "no result after 4 s" in by_status["timeout"][0].reason
    assert "exit code 3" in by_status["crashed"][0].reason
    assert res.best is not None and (res.best.config["BLOCK_M"], res.best.config["BLOCK_N"]) not in {(32, 16), (32, 64)}


def test_worker_prepares_once_and_is_replaced_after_a_crash():
    with TrialWorker(MISBEHAVING, CPU, timeout_s=60) as worker:
        worker.bind(Point(1, 1, 40, 32))
        ok = dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=1, CAUSAL_SPLIT=False)
        assert worker.run(ok).status == "ok" and worker.run(ok).status == "ok" and worker.started == 1
        assert worker.run({**ok, "BLOCK_M": 32, "BLOCK_N": 64}).status == "crashed"
        assert worker.run(ok).status == "ok" and worker.started == 2
        assert worker.run({**ok, "BLOCK_M": 128}).status == "invalid"  # rules run in the worker too


def test_faulty_family_exists_only_with_the_env_var(monkeypatch):
    monkeypatch.delenv("FLASHCORE_FAULT_INJECTION", raising=False)
    with pytest.raises(KeyError, match="unknown kernel"):
        get_family("attention_fwd_faulty")
    result = cli("sweep", "--gpu", "cpu", "--kernel", "attention_fwd_faulty")
    assert result.exit_code == 1 and "unknown kernel 'attention_fwd_faulty'" in result.output
    monkeypatch.setenv("FLASHCORE_FAULT_INJECTION", "1")
    assert get_family("attention_fwd_faulty") == FAULTY_FAMILY
    point = Point(1, 2, 64, 32)  # its winners are keyed by its own name: never served as attention_fwd's
    assert make_key(point, FAULTY_FAMILY, "g", "9.0").id != make_key(point, get_family("attention_fwd"), "g", "9.0").id


@pytest.mark.slow
def test_fault_injection_sweep_through_the_cli_logs_the_crash(tmp_path):
    db = tmp_path / "faulty.db"
    result = cli("sweep", "--gpu", "cpu", "--grid", "smoke", "--kernel", "attention_fwd_faulty", "--trials", "2",
                 "--db", db, env={"FLASHCORE_FAULT_INJECTION": "1"})
    assert result.exit_code == 0, result.output
    crash = (r"B1-H3-S77-D64-full-float16 attention_fwd_faulty \[M32 N32 w4 s1[^\]]*\]: "
             r"crashed: the worker process died while running the config \(signal SIGSEGV\)")
    assert re.search(crash, result.output), result.output
    with CacheStore.open(db) as store:
        assert len(store.winners(kernel="attention_fwd_faulty")) == SMOKE_POINTS
        assert any(t.status == "crashed" for t in store.trials())


# -- resume ----------------------------------------------------------------------------------------------------


def test_a_study_resumes_and_a_point_without_winner_counts_as_done(tmp_path):
    point = Point(1, 1, 20, 32, True)  # 4 valid configs
    with CacheStore.open(tmp_path / "c.db") as store:
        first = tune_point(point, store, SweepOptions(profile=CPU, trials=2))
        more = tune_point(point, store, SweepOptions(profile=CPU, trials=4))
        assert more.resumed == len(first.trials) and len(store.trials()) == len(more.trials)
        measured = [config_key(t.config) for t in more.trials if t.status != "invalid"]
        assert len(measured) == 4 == len(set(measured))  # two new configs; the first two not run again
        bad = [tune_point(point, store, SweepOptions(profile=CPU, trials=3), kernel=UNWRITTEN) for _ in range(2)]
        assert bad[0].best is None and {t.status for t in bad[0].trials} <= {"gate_failed", "invalid"}
        assert bad[1].resumed == len(bad[1].trials) == len(bad[0].trials)  # done: nothing ran again
    assert Path(f"{tmp_path / 'c.db'}.optuna.log").stat().st_size > 0


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux /proc; empty elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def config_key(config: dict) -> tuple:
    return tuple(sorted(config.items()))


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path):
    db = tmp_path / "cache.db"
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(sweep_cmd(db), cwd=ROOT, env=child_env(), stdout=log, stderr=log)
        deadline = time.monotonic() + 240
        while len(rows(db, "SELECT id FROM trials")) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        orphans = children(proc.pid)  # its trial worker (and multiprocessing's resource tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = rows(db, "SELECT * FROM trials ORDER BY id")
    unfinished = {r[1] for r in before} - {w[0] for w in rows(db, "SELECT key_id FROM winners")}
    assert len(before) >= 4 and orphans
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in orphans) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in orphans if Path(f"/proc/{pid}").exists()], "the worker outlived its sweep"
    second = subprocess.run(sweep_cmd(db), cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert unfinished, "the kill landed between points"  # 4 trials into a 6-trial study: mid-point
    assert "resumed" in second.stderr  # the point cut short goes on where it stopped
    after = rows(db, "SELECT * FROM trials ORDER BY id")
    assert after[: len(before)] == before  # nothing recorded before the kill was lost or changed
    ok = collections.Counter((r[0], r[1]) for r in rows(db, "SELECT key_id, config FROM trials WHERE status = 'ok'"))
    assert ok and max(ok.values()) == 1, ok  # no completed config ran twice
    assert len(rows(db, "SELECT key_id FROM winners")) == SMOKE_POINTS
    third = subprocess.run(sweep_cmd(db), cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and rows(db, "SELECT * FROM trials ORDER BY id") == after


# -- concurrency -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_three_concurrent_sweeps_into_one_cache(tmp_path):
    db = tmp_path / "shared.db"
    logs = [tmp_path / f"sweep{i}.err" for i in range(3)]
    procs = []
    for log in logs:
        with open(log, "wb") as err:
            procs.append(subprocess.Popen(sweep_cmd(db, "--trials", "4"), cwd=ROOT, env=child_env(),
                                          stdout=subprocess.DEVNULL, stderr=err))
    codes = [p.wait(timeout=400) for p in procs]
    errors = [log.read_text() for log in logs]
    assert codes == [0, 0, 0], errors
    assert not any("locked" in e.lower() for e in errors), errors
    winners = rows(db, "SELECT key_id FROM winners")
    assert len(winners) == len({w[0] for w in winners}) == SMOKE_POINTS
    writers = {json.loads(extra)["process"] for (extra,) in rows(db, "SELECT extra FROM trials")}
    assert writers == {f"{socket.gethostname()}:{p.pid}" for p in procs}  # each process tuned a point
    ok = collections.Counter(rows(db, "SELECT key_id, config FROM trials WHERE status = 'ok'"))
    assert max(ok.values()) == 1  # no point was tuned twice


def test_claim_of_a_dead_process_is_free_again(tmp_path):
    point = Point(1, 1, 20, 32)
    with CacheStore.open(tmp_path / "c.db") as store:
        key = make_key(point, get_family("attention_fwd"), "cpu-interpreter", "cpu")
        claim = PointClaim(store, key)
        claim.path.parent.mkdir(parents=True)
        holder = subprocess.Popen(  # holds the claim, then dies by SIGKILL after 2 s
            [sys.executable, "-c", "import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(2)\nos.kill(os.getpid(), 9)",
             str(claim.path)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        assert not claim.acquire()
        waited = []
        results = sweep([point, Point(1, 1, 20, 32, True)], store, SweepOptions(profile=CPU, trials=1, isolate=False, poll_s=0.2, kernels=("attention_fwd",)), Hooks(on_wait=waited.append))
        assert holder.wait() == -signal.SIGKILL
        assert waited == [point]  # left for later while held, tuned once its holder was killed
        assert [r.point for r in results] == [point, Point(1, 1, 20, 32, True)]
        assert all(r.best is not None and not r.skipped for r in results)
        assert claim.acquire()
        claim.release()
    with open(claim.path) as f:  # released: anyone may take it
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- staleness and validate ------------------------------------------------------------------------------------


def test_stale_winners_are_never_served(tmp_path):
    db = tmp_path / "c.db"
    point = Point(1, 2, 64, 32)
    family = get_family("attention_fwd")
    key = make_key(point, family, "cpu-interpreter", "cpu")
    config = fwd_config(BLOCK_M=16, BLOCK_N=16, num_warps=2, CAUSAL_SPLIT=False)
    entry = Entry(key, config, 10.0, 11.0, 12.0, 1.0, 1e-4, "2025-01-01T00:00:00+00:00")
    with CacheStore.open(db) as store:
        for change in ({"triton_version": "2.0.0"}, {"kernel_hash": "0" * 16}):
            store.put_winner(dataclasses.replace(entry, key=dataclasses.replace(key, **change)))
    shape = (point.batch, point.heads, point.seq_len, point.head_dim)
    assert get_kernel(shape, db=db, gpu="cpu").source == "default"
    with CacheStore.open(db) as store:
        store.put_winner(entry)
    from flashcore.autotune import clear_cache

    clear_cache()
    served = get_kernel(shape, db=db, gpu="cpu")
    assert served.source == "exact" and served.entry == entry


@pytest.mark.slow
def test_validate_passes_fresh_winners_then_reports_and_drops_bad_ones(tmp_path, monkeypatch):
    db = tmp_path / "c.db"
    points = [Point(1, 1, 20, 32), Point(1, 1, 20, 32, True)]
    with CacheStore.open(db) as store:
        sweep(points, store, SweepOptions(profile=CPU, trials=1, kernels=("attention_fwd",)))
    result = cli("validate", "--gpu", "cpu", "--db", db)
    assert result.exit_code == 0, result.output
    assert result.output.count("pass") >= 2 and "all 2 served winners pass" in result.output

    # corrupt one winner's config to one the kernel rejects, and add a faulty-family winner that segfaults
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE winners SET config = ? WHERE causal = 1",
                      [json.dumps(dict(BLOCK_M=8, BLOCK_N=32, num_warps=4, num_stages=1, CAUSAL_SPLIT=False))])
    conn.close()
    monkeypatch.setenv("FLASHCORE_FAULT_INJECTION", "1")
    with CacheStore.open(db) as store:
        good = store.winners(causal=False)[0]
        key = make_key(points[0], FAULTY_FAMILY, "cpu-interpreter", "cpu")
        store.put_winner(dataclasses.replace(good, key=key, config=SPACE.default_for(points[0], CPU)))
        assert len(store.winners()) == 3
    result = cli("validate", "--gpu", "cpu", "--db", db)
    assert result.exit_code == 1, result.output
    assert "FAIL (invalid)" in result.output and "BLOCK_M must be one of" in result.output
    assert "FAIL (crashed)" in result.output and "SIGSEGV" in result.output
    assert "2 of 3 winners fail the gate" in result.output
    with CacheStore.open(db) as store:
        assert len(store.winners()) == 3  # nothing dropped without --drop
    result = cli("validate", "--gpu", "cpu", "--db", db, "--drop")
    assert result.exit_code == 0, result.output
    assert result.output.count("dropped") == 3  # two rows and the summary line
    with CacheStore.open(db) as store:
        assert [w.key.kernel for w in store.winners()] == ["attention_fwd"] and store.winners()[0].config == good.config
    assert cli("validate", "--gpu", "cpu", "--db", db).exit_code == 0
