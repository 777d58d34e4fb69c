"""The face-off: where several candidates were tuned at a point, their winners timed again in turns, in one
process on the same inputs, and those figures stored as the winners'.

Each candidate's study times its configs on its own, minutes apart from the other candidates' (a backend's one
trial sometimes in another sweep altogether). On an H200 the same kernel at the same point can run 15% slower
for seconds on end, and then not (B64 KV16384 decode: ``benchmarks/probe_decode_timing.py``), so figures taken
apart can put one candidate ahead of another that is as fast: the shipped tables had cuDNN at 1085 µs and
our split-KV kernel at 964 µs where both run in ~945 µs, and get_kernel served ours where cuDNN was as good.
:func:`face_off` times each winner ``rounds`` times, each turn in a rotated order, and stores for each the turn
with the median time (every turn is recorded as a trial of study ``<key id>-faceoff``; the winner is the median
turn's trial, replacing the old figures even where they were faster: the same config, measured beside its
rivals). A candidate that fails in a turn keeps its old figures.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from flashcore.cache import CacheStore, Entry, TrialRecord

from ..core.problem import Point

FACEOFF_ROUNDS = 3


def face_off(point: Point, results: list[tuple[Any, Any]], store: CacheStore, run: Callable[[Any, dict], Any],
             record: Callable[..., TrialRecord], rounds: int = FACEOFF_ROUNDS) -> dict[str, float]:
    """Time the winners of ``results`` ((family, ``PointResult``) of each candidate at ``point``; at least one
    tuned in this sweep, not all read from the cache) in ``rounds`` turns with ``run(family, config) ->
    TrialOutcome`` and store each one's median turn (``record`` makes the trial records, as the sweep's
    ``_record``). Updates each result's ``best``; returns {candidate: stored median µs}."""
    pairs = [(f, r) for f, r in results if r.best is not None and r.best.status == "ok"
             and r.best.median_us is not None]
    if rounds < 1 or len(pairs) < 2 or all(r.skipped for _, r in pairs):
        return {}
    families = [f for f, _ in pairs]
    fighters = [r for _, r in pairs]
    turns: dict[int, list[TrialRecord]] = {i: [] for i in range(len(fighters))}
    failed: set[int] = set()
    origin = {"process": f"{socket.gethostname()}:{os.getpid()}", "faceoff": True}
    for turn in range(rounds):
        first = turn % len(fighters)
        for i in [*range(first, len(fighters)), *range(first)]:
            if i in failed:
                continue
            res = fighters[i]
            outcome = run(families[i], dict(res.best.config))
            rec = record(res.key, dict(res.best.config), outcome, f"{res.key.id}-faceoff", turn, origin)
            store.add_trial(rec)
            if rec.status == "ok" and rec.median_us is not None:
                turns[i].append(rec)
            else:
                failed.add(i)
    stored = {}
    for i, res in enumerate(fighters):
        if i in failed or len(turns[i]) != rounds:
            continue
        median = sorted(turns[i], key=lambda t: t.median_us)[(rounds - 1) // 2]
        store.put_winner(Entry.from_trial(median), replace=True)
        res.best = median
        stored[res.key.kernel] = median.median_us
    return stored
