"""Merge several cache files into one: per key the fastest winner, and every trial of every input once.

Each host writes its own SQLite cache; :func:`merge_caches` combines them. Inputs are only ever read: each one is
copied with SQLite's backup API from a read-only connection into a private temporary folder, and that copy is what
``CacheStore.open`` checks and migrates, so a schema-1 input works and is never upgraded in place. The result is
built in a temporary file next to the output and renamed over it at the very end: any failure leaves the output
as it was.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from ._errors import CacheError, TableError
from .migrations import detect_version
from .store import CacheStore, _describe, _insert, _trial_row
from .table_format import check_entries
from ._types import TRIAL_STATUSES, Entry, TrialRecord

_SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class InputSummary:
    """What one input held, and what it contributed to the merged cache."""

    path: Path
    schema_version: int  # the input's own schema (1 for an old file, which is read through a migrated copy)
    winners: int
    trials: int
    winners_kept: int  # keys whose merged winner came from this input (ties go to the earlier input)
    trials_added: int  # trials of this input the result did not already hold from an earlier input


@dataclass(frozen=True)
class MergeReport:
    """The outcome of :func:`merge_caches`: one summary per input, in the order given, and the result's totals."""

    output: Path
    inputs: tuple[InputSummary, ...]
    winners: int
    trials: int

    @property
    def duplicate_trials(self) -> int:
        """Trial rows read from the inputs that were already in the result: the same trial (same id, or the same
        measurement in every recorded detail) in several inputs, e.g. a file listed twice or copied into another."""
        return sum(item.trials for item in self.inputs) - self.trials


def _trial_identity(rec: TrialRecord) -> tuple[Any, ...]:
    """What makes two trial rows the same trial: the same study, key and config, and the same measurement.

    A sweep records each trial's own id (``extra["trial_id"]``, a uuid) with the host and process that ran it
    (``extra["process"]``). Without an id (a trial of an older FlashCore) the measurement is identified by
    everything recorded about it: status, reason, figures, time, torch build and ``extra`` (host, process and
    where its time went). Two sweeps that ran the same study at the same second (one-second ``created_at``) on
    two hosts are then different trials; the same row read twice (a file merged twice) is one.
    """
    config = _canonical(rec.config)
    trial_id = rec.extra.get("trial_id") if isinstance(rec.extra, dict) else None
    if isinstance(trial_id, str) and trial_id:
        return (rec.key.id, rec.study, config, "trial_id", trial_id)
    measured = {f.name: getattr(rec, f.name) for f in fields(rec) if f.name not in ("key", "config", "study")}
    return (rec.key.id, rec.study, config, "measurement", _canonical(measured))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _source_uri(path: Path, header: bytes) -> str:
    """A read-only SQLite URI for ``path`` that creates nothing beside it.

    A WAL-mode file with no ``-wal`` beside it is not open anywhere, so it is read ``immutable`` (a read-only
    connection would otherwise leave fresh ``-wal``/``-shm`` files next to the user's input). Otherwise the
    file is either in rollback mode (a plain read-only open writes nothing) or its sidecars already exist.
    """
    wal_mode = header.startswith(_SQLITE_MAGIC) and len(header) >= 20 and header[18] == 2
    immutable = wal_mode and not Path(f"{path}-wal").exists()
    return path.resolve().as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")


def _snapshot(path: Path, copy: Path) -> int:
    """Check that ``path`` is a FlashCore cache and copy it to ``copy``, only reading it; return its schema."""
    if not path.exists():
        raise CacheError(f"{path}: no such file")
    if not path.is_file():
        raise CacheError(f"{path} is not a file, so not a FlashCore cache")
    try:
        with path.open("rb") as handle:
            header = handle.read(100)
    except OSError as exc:
        raise CacheError(f"cannot read {path} ({exc.strerror or exc})") from None
    try:
        source = sqlite3.connect(_source_uri(path, header), uri=True)
    except sqlite3.Error as exc:
        raise CacheError(f"cannot open {path} ({exc})") from None
    try:
        source.execute("PRAGMA busy_timeout = 30000")
        problems = [str(row[0]) for row in source.execute("PRAGMA quick_check(1)").fetchall()] or ["?"]
        if problems != ["ok"]:
            raise CacheError(f"{path} is not a FlashCore cache (corrupted: {problems[0]})")
        version = detect_version(Database(source, execute_plugins=False), str(path))
        if version == 0:
            raise CacheError(f"{path} is not a FlashCore cache (it is an empty database)")
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise CacheError(_describe(str(path), exc)) from None
    finally:
        source.close()
    return version


def _read(path: Path, copy: Path) -> tuple[list[Entry], list[TrialRecord]]:
    """The winners and trials of the (migrated) copy of input ``path``; errors name ``path``, not the copy."""
    try:
        with CacheStore.open(copy) as store:
            winners, trials = store.winners(), store.trials()
        check_entries(winners)
    except TableError as exc:
        raise CacheError(f"{path} holds an invalid winner ({exc})") from None
    except CacheError as exc:
        raise CacheError(str(exc).replace(str(copy), str(path))) from None
    for rec in trials:
        if rec.status not in TRIAL_STATUSES:
            raise CacheError(f"{path} holds a trial with unknown status {rec.status!r}")
    return winners, trials


def _check_output(output: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse an output that is a folder, in a folder that does not exist, an unlisted existing file (without
    ``overwrite``), or in use. No folder is ever created: a mistyped path is an error, not a new directory."""
    if output.is_dir():
        raise CacheError(f"{output} is a directory; the output must be a file name")
    if not output.parent.is_dir():
        raise CacheError(f"the folder {output.parent} of {output} does not exist (merge creates no folders)")
    if output.exists() and not overwrite and not any(_same_file(output, p) for p in inputs):
        raise CacheError(f"{output} already exists and is not one of the inputs: list it among the inputs to "
                         "merge into it, or pass --overwrite to replace it")
    _check_not_in_use(output)


def _check_not_in_use(output: Path) -> None:
    """Refuse to replace a cache that some process has open: its sidecar files would then belong to no file."""
    for suffix in ("-wal", "-journal"):
        side = Path(f"{output}{suffix}")
        if side.exists():
            raise CacheError(f"{output} is open in another process or was not closed cleanly ({side.name} exists); "
                             f"stop that process (or open the file once, e.g. `autotune show --db {output}`) and "
                             "merge again")


def _write(output: Path, winners: list[Entry], trials: list[TrialRecord]) -> None:
    """Build the merged cache in a temporary file next to ``output``, then rename it over ``output``."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".merging", dir=output.parent)
        os.close(fd)
    except OSError as exc:
        raise CacheError(f"cannot write next to {output} ({exc.strerror or exc})") from None
    tmp = Path(name)
    try:
        with CacheStore.open(tmp) as store:
            store.import_entries(winners, replace=True)
            rows = [_trial_row(rec) for rec in trials]
            # One transaction for every trial (CacheStore.add_trial commits each row on its own).
            store._write(lambda db: [_insert(db, "trials", row) for row in rows])
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is meant to be shared
        _check_not_in_use(output)  # again: nobody opened it while we worked
        os.replace(tmp, output)
    except OSError as exc:
        raise CacheError(f"cannot write {output} ({exc.strerror or exc})") from None
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)


def merge_caches(inputs: list[Path], output: Path, overwrite: bool = False) -> MergeReport:
    """Merge the caches ``inputs`` into ``output`` and report what came from where.

    Per key the winner with the lowest ``median_us`` is kept (a tie keeps the earlier input's). Every trial of
    every input is kept once: two rows are the same trial only when study, key, config and the measurement
    itself are (:func:`_trial_identity`: the trial's recorded id, else every recorded figure, time, host and
    process), and a row repeated ``n`` times within one input is kept ``n`` times. So caches swept at the same
    time on several hosts lose no trial (and each winner keeps its own trial), while listing a file twice, or
    merging into an output that already holds some trials, adds nothing. ``output`` may be one of the inputs
    (merge into it); if it exists otherwise, CacheError unless ``overwrite``; its folder must exist. Inputs are
    never modified; any problem (an input that is missing, not a FlashCore cache, corrupted or of a newer
    schema) raises CacheError naming the file, before ``output`` is touched.
    """
    paths = [Path(p).expanduser() for p in inputs]
    output = Path(output).expanduser()
    if not paths:
        raise CacheError("merge needs at least one input cache")
    _check_output(output, paths, overwrite)
    loaded: list[tuple[int, list[Entry], list[TrialRecord]]] = []
    with tempfile.TemporaryDirectory(prefix="flashcore-merge-") as folder:
        for index, path in enumerate(paths):
            copy = Path(folder) / f"input-{index}.db"
            version = _snapshot(path, copy)
            loaded.append((version, *_read(path, copy)))
    best: dict[str, tuple[Entry, int]] = {}
    for index, (_, winners, _) in enumerate(loaded):
        for entry in winners:
            held = best.get(entry.key.id)
            if held is None or entry.median_us < held[0].median_us:
                best[entry.key.id] = (entry, index)
    kept: Counter[tuple[Any, ...]] = Counter()
    merged: list[TrialRecord] = []
    added = [0] * len(paths)
    for index, (_, _, trials) in enumerate(loaded):
        seen: Counter[tuple[Any, ...]] = Counter()
        for rec in trials:
            identity = _trial_identity(rec)
            seen[identity] += 1
            if seen[identity] > kept[identity]:
                kept[identity] = seen[identity]
                merged.append(rec)
                added[index] += 1
    _write(output, [entry for entry, _ in best.values()], merged)
    from_input = Counter(index for _, index in best.values())
    summaries = tuple(
        InputSummary(path=path, schema_version=version, winners=len(winners), trials=len(trials),
                      winners_kept=from_input[index], trials_added=added[index])
        for index, (path, (version, winners, trials)) in enumerate(zip(paths, loaded))
    )  # fmt: skip
    return MergeReport(output=output, inputs=summaries, winners=len(best), trials=len(merged))
