"""`autotune merge` and cache.merge_caches: fastest winner per key, every trial once, inputs never touched."""

from __future__ import annotations

import os
import random
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flashcore.cache.merge
from flashcore.autotune.cli.app import app
from flashcore.cache import CacheError, CacheKey, CacheStore, Entry, MergeReport, TrialRecord, merge_caches

from _shapes import make_key  # noqa: E402

FIXTURE = Path(__file__).with_name("fixtures") / "cache-v1.db"
runner = CliRunner()




def make_entry(key: CacheKey, median: float, block_m: int = 128) -> Entry:
    return Entry(key=key, config={"BLOCK_M": block_m, "BLOCK_N": 64, "num_warps": 8}, median_us=median,
                 p95_us=median * 1.1, p99_us=median * 1.2, tflops=200.0, rel_err=1e-3,
                 created_at="2025-03-01T12:00:00+00:00")  # fmt: skip


def trial(key: CacheKey, number: int | None, study: str = "s", status: str = "ok", when: str = "t0") -> TrialRecord:
    median = None if status != "ok" else 10.0 + (number or 0)
    return TrialRecord(key=key, config={"BLOCK_M": 64, "n": number or 0}, status=status, median_us=median,
                       study=study, trial_number=number, created_at=when, extra={"host": study})


SHARED, SPLIT, ONLY_A, ONLY_B = make_key(), make_key(seq_len=8192), make_key(heads=8), make_key(causal=False)
COMMON_TRIAL = trial(SHARED, 0, study="common")  # present in both files (e.g. a copied cache)


def build(path: Path, entries: list[Entry], trials: list[TrialRecord]) -> Path:
    with CacheStore.open(path, make_parents=True) as store:
        store.import_entries(entries, replace=True)
        for rec in trials:
            store.add_trial(rec)
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two hosts' caches: A is faster on SHARED, B on SPLIT; each has a key of its own and one common trial."""
    a = build(tmp_path / "hostA" / "a.db",
              [make_entry(SHARED, 10.0, 64), make_entry(SPLIT, 50.0, 64), make_entry(ONLY_A, 7.0)],
              [COMMON_TRIAL, trial(SHARED, 1, "a"), trial(SPLIT, 2, "a"), trial(ONLY_A, 3, "a", "resources")])
    b = build(tmp_path / "hostB" / "b.db",
              [make_entry(SHARED, 20.0, 32), make_entry(SPLIT, 30.0, 32), make_entry(ONLY_B, 9.0)],
              [trial(SHARED, 1, "b"), COMMON_TRIAL, trial(ONLY_B, 4, "b", "timeout")])
    return a, b


def state(path: Path) -> tuple[bytes, list[str]]:
    """A file's bytes and its folder's listing: equal before and after means the file was not touched at all."""
    return path.read_bytes(), sorted(os.listdir(path.parent))


def trial_multiset(path: Path) -> Counter:
    with CacheStore.open(path) as store:
        return Counter(flashcore.cache.merge._trial_identity(rec) for rec in store.trials())


def invoke(*args: object):
    return runner.invoke(app, ["merge", *(str(a) for a in args)])


def test_fastest_winner_per_key_and_every_trial_once(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = pair
    before = state(a), state(b)
    out = tmp_path / "merged.db"
    report = merge_caches([a, b], out)
    assert isinstance(report, MergeReport) and report.output == out
    assert (state(a), state(b)) == before  # inputs byte-for-byte unchanged, no sidecar files left beside them
    with CacheStore.open(out) as store:
        winners = {w.key: w for w in store.winners()}
        trials = store.trials()
    assert set(winners) == {SHARED, SPLIT, ONLY_A, ONLY_B}
    assert (winners[SHARED].median_us, winners[SHARED].config["BLOCK_M"]) == (10.0, 64)  # A was faster
    assert (winners[SPLIT].median_us, winners[SPLIT].config["BLOCK_M"]) == (30.0, 32)  # B was faster
    assert winners[SHARED].p99_us == pytest.approx(12.0)
    expected = trial_multiset(a) | trial_multiset(b)  # union: the common trial once
    assert Counter(flashcore.cache.merge._trial_identity(t) for t in trials) == expected
    assert len(trials) == 6 and trials.count(COMMON_TRIAL) == 1
    assert {t.extra["host"] for t in trials} == {"a", "b", "common"}
    summary_a, summary_b = report.inputs
    assert (summary_a.winners, summary_a.trials, summary_a.winners_kept, summary_a.trials_added) == (3, 4, 2, 4)
    assert (summary_b.winners, summary_b.trials, summary_b.winners_kept, summary_b.trials_added) == (3, 3, 2, 2)
    assert (report.winners, report.trials, report.duplicate_trials) == (4, 6, 1)


def test_same_file_twice_and_merging_into_out_add_nothing(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = pair
    once = merge_caches([a], tmp_path / "once.db")
    twice = merge_caches([a, a], tmp_path / "twice.db")
    assert trial_multiset(tmp_path / "once.db") == trial_multiset(tmp_path / "twice.db")
    assert (twice.winners, twice.trials) == (once.winners, once.trials) == (3, 4)
    assert (twice.inputs[1].winners_kept, twice.inputs[1].trials_added) == (0, 0)
    out = tmp_path / "merged.db"
    first = merge_caches([a, b], out)
    again = merge_caches([out, a, b, a], out)  # OUT listed as an input: merge into it
    assert (again.winners, again.trials) == (first.winners, first.trials)
    assert [item.trials_added for item in again.inputs] == [first.trials, 0, 0, 0]
    assert trial_multiset(out) == trial_multiset(a) | trial_multiset(b)
    faster = build(tmp_path / "c.db", [make_entry(SPLIT, 1.5, 16)], [])  # a faster winner merged into OUT
    assert [item.winners_kept for item in merge_caches([out, faster], out).inputs] == [3, 1]
    with CacheStore.open(out) as store:
        assert store.get_winner(SPLIT).median_us == 1.5 and len(store.winners()) == 4


def test_repeats_within_one_input_are_kept(tmp_path: Path) -> None:
    failed = trial(ONLY_A, None, study="", status="resources", when="")
    a = build(tmp_path / "a.db", [], [failed, failed, trial(ONLY_A, 1)])
    report = merge_caches([a, a], tmp_path / "out.db")
    assert report.trials == 3 and trial_multiset(tmp_path / "out.db")[flashcore.cache.merge._trial_identity(failed)] == 2


def test_v1_input_is_read_through_a_migrated_copy(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = pair
    before = state(FIXTURE)
    report = merge_caches([FIXTURE, a], tmp_path / "out.db")
    assert state(FIXTURE) == before  # never migrated in place, nothing written beside it
    assert report.inputs[0].schema_version == 1 and report.inputs[1].schema_version == 3
    assert (report.inputs[0].winners, report.inputs[0].trials) == (2, 3)
    # the fixture's float16 key is SHARED (812.5 µs there, 10 µs in A): A's wins, the fixture keeps its bfloat16 key
    assert [item.winners_kept for item in report.inputs] == [1, 3]
    with CacheStore.open(tmp_path / "out.db") as store:
        assert store.schema_version == 3 and len(store.winners()) == 4 and len(store.trials()) == 7
        assert store.get_winner(SHARED).median_us == 10.0
        (old,) = store.winners(dtype="bfloat16")
        assert (old.median_us, old.p95_us, old.p99_us) == (95.25, 99.0, 99.0)  # migrated: p99 bound = p95
        assert len([t for t in store.trials() if t.study == "fixture-study"]) == 3


def test_an_input_open_in_another_process_is_read_with_its_pending_writes(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    with CacheStore.open(path) as live:  # a sweep still running: its last writes sit in live.db-wal
        live.put_winner(make_entry(ONLY_B, 3.0))
        live.add_trial(trial(ONLY_B, 1))
        report = merge_caches([path], tmp_path / "out.db")
    assert (report.winners, report.trials) == (1, 1)


def _sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def _newer(path: Path) -> None:
    build(path, [], [])
    _sql(path, "UPDATE meta SET value = '4' WHERE key = 'schema_version'", "PRAGMA user_version = 4")


def _truncated(path: Path) -> None:
    build(path, [], [trial(make_key(heads=i + 1), i, study="x" * 300) for i in range(200)])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BAD_INPUTS = [
    pytest.param(lambda p: p.write_bytes(random.Random(0).randbytes(8192)), "is not a FlashCore cache", id="random"),
    pytest.param(_truncated, "is not a FlashCore cache", id="truncated"),
    pytest.param(lambda p: _sql(p, "CREATE TABLE users (id INTEGER)"), "is not a FlashCore cache", id="foreign"),
    pytest.param(lambda p: p.write_bytes(b""), "is not a FlashCore cache", id="empty-file"),
    pytest.param(_newer, "newer FlashCore (schema 4)", id="newer-schema"),
    pytest.param(lambda p: None, "no such file", id="missing"),
]


@pytest.mark.parametrize("make, message", BAD_INPUTS)
def test_bad_input_exits_1_with_one_line_and_no_output(make, message, pair, tmp_path: Path) -> None:
    bad = tmp_path / "bad" / "bad.db"
    bad.parent.mkdir()
    make(bad)
    before = state(bad) if bad.exists() else None
    out = tmp_path / "out" / "merged.db"
    out.parent.mkdir()
    result = invoke(pair[0], bad, pair[1], "-o", out)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(bad) in lines[0] and "Traceback" not in result.output
    assert os.listdir(out.parent) == []  # no output, no temporary file left behind
    assert (state(bad) if bad.exists() else None) == before


def test_existing_out_not_listed_needs_overwrite(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = pair
    out = build(tmp_path / "out.db", [make_entry(make_key(heads=99), 1.0)], [])
    before = state(out)
    result = invoke(a, b, "-o", out)
    assert result.exit_code == 1 and "already exists" in result.output and "--overwrite" in result.output
    assert len(result.output.strip().splitlines()) == 1 and state(out) == before
    result = invoke(a, b, "-o", out, "--overwrite")
    assert result.exit_code == 0, result.output
    with CacheStore.open(out) as store:  # replaced, not merged into
        assert {w.key for w in store.winners()} == {SHARED, SPLIT, ONLY_A, ONLY_B}
    with pytest.raises(CacheError, match="is a directory"):
        merge_caches([a, b], tmp_path, overwrite=True)


def test_out_open_elsewhere_is_refused_untouched(pair: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "merged.db"
    merge_caches([pair[0]], out)
    with CacheStore.open(out):
        with pytest.raises(CacheError, match=r"open in another process .*merged\.db-wal exists"):
            merge_caches([out, pair[1]], out)
    assert len(merge_caches([out], tmp_path / "copy.db").inputs) == 1


def test_failure_while_writing_leaves_out_untouched(pair, tmp_path: Path, monkeypatch) -> None:
    a, b = pair
    out = tmp_path / "merged.db"
    merge_caches([a], out)
    before = state(out)

    def broken(rec: TrialRecord) -> dict:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(flashcore.cache.merge, "_trial_row", broken)
    with pytest.raises(CacheError, match="No space left on device"):
        merge_caches([out, b], out)
    assert state(out) == before


def test_cli_prints_the_summary(pair: tuple[Path, Path], tmp_path: Path) -> None:
    result = invoke(*pair, "-o", tmp_path / "merged.db")
    assert result.exit_code == 0, result.output
    assert all(part in result.output for part in ("merged 2 caches", "a.db", "b.db", "result", "winners kept"))
    assert "4 winners (the fastest per key) and 6 trials" in result.output
    assert "1 duplicate trials skipped" in result.output
    with CacheStore.open(tmp_path / "merged.db") as store:
        assert len(store.winners()) == 4


# -- caches swept at the same time: every measurement is its own trial --------------------------------------------

STUDY = f"{SHARED.id}-seed0-spacefeed1234"


def swept_cache(path: Path, host: str, medians: list[float], monkeypatch, trial_ids: bool = True) -> Path:
    """A cache written the way a sweep writes one (``tuning.sweep._record``): trial n of one seeded study proposes the
    same config on every host, and every trial of both hosts is recorded in the same second (created_at has
    one-second resolution); only the measurements differ. The fastest trial is the winner."""
    from flashcore.autotune.tuning import sweep as sweep_mod
    from flashcore.autotune.tuning.trial import TrialOutcome

    monkeypatch.setattr(sweep_mod, "now_iso", lambda: "2026-12-01T10:00:00+00:00")
    origin = {"process": f"{host}:4242"}
    records = [sweep_mod._record(SHARED, {"BLOCK_M": 64, "n": n}, TrialOutcome(
        "ok", median_us=m, p95_us=m * 1.1, p99_us=m * 1.2, tflops=100.0 / m, rel_err=1e-3), STUDY, n, origin)
        for n, m in enumerate(medians)]
    records.append(sweep_mod._record(SHARED, {"BLOCK_M": 256, "n": 9}, TrialOutcome(
        "resources", reason="out of shared memory"), STUDY, len(medians), origin))
    if not trial_ids:  # trials of an older FlashCore: no id of their own
        records = [TrialRecord(**{**r.__dict__, "extra": {k: v for k, v in r.extra.items() if k != "trial_id"}})
                   for r in records]
    best = min((r for r in records if r.status == "ok"), key=lambda r: r.median_us)
    return build(path, [Entry.from_trial(best)], records)


@pytest.mark.parametrize("trial_ids", [True, False], ids=["trial-ids", "older-trials-without-ids"])
def test_caches_swept_at_the_same_time_lose_no_trial(tmp_path: Path, monkeypatch, trial_ids: bool) -> None:
    a = swept_cache(tmp_path / "a.db", "hostA", [30.0, 20.0, 25.0], monkeypatch, trial_ids)
    b = swept_cache(tmp_path / "b.db", "hostB", [28.0, 12.0, 26.0], monkeypatch, trial_ids)
    out = tmp_path / "merged.db"
    report = merge_caches([a, b], out)
    assert (report.trials, report.duplicate_trials) == (8, 0)
    assert [item.trials_added for item in report.inputs] == [4, 4]
    with CacheStore.open(out) as store:
        (winner,) = store.winners()
        trials = store.trials()
    assert sorted(t.median_us for t in trials if t.status == "ok") == [12.0, 20.0, 25.0, 26.0, 28.0, 30.0]
    assert sorted(t.extra["process"] for t in trials if t.status == "resources") == ["hostA:4242", "hostB:4242"]
    # the winner (host B's trial 1) keeps its own trial row, though host A's trial 1 has its key, study, number,
    # config, status and second
    assert winner.median_us == 12.0
    own = [t for t in trials if t.config == winner.config and t.median_us == winner.median_us]
    assert len(own) == 1 and own[0].extra["process"] == "hostB:4242" and own[0].p99_us == winner.p99_us
    # true duplicates are still skipped: the same files again add nothing
    again = merge_caches([out, a, b, b], out)
    assert (again.trials, again.duplicate_trials) == (8, 12)
    assert [item.trials_added for item in again.inputs] == [8, 0, 0, 0]


def test_merge_into_a_folder_that_does_not_exist_creates_nothing(pair: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "dir" / "merged.db"
    result = invoke(*pair, "-o", out)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "no").exists()
    with pytest.raises(CacheError, match="does not exist"):
        merge_caches(list(pair), out)
    assert not (tmp_path / "no").exists()
