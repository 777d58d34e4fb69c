"""What a worker of `sweep --devices` did at each point, handed to its parent: ``PointResult``s as JSON.

The parent (``cli.multi``) names a file per worker in ``$FLASHCORE_SWEEP_RESULTS``; the worker (``cli.sweep``)
writes its results there instead of printing the winners table, and the parent prints one table from them all.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

RESULTS_ENV = "FLASHCORE_SWEEP_RESULTS"  # where a worker writes its PointResults (JSON) for its parent


def dump_results(path: str | Path, results: list) -> None:
    """Write a worker's ``PointResult``s for its parent (``load_results``)."""
    def trial(rec):
        return None if rec is None else {k: v for k, v in asdict(rec).items() if k != "key"}

    rows = [{"key_id": r.key.id, "trials": [trial(t) for t in r.trials], "best": trial(r.best),
             "best_index": next((i for i, t in enumerate(r.trials) if t is r.best), None),
             "valid_configs": r.valid_configs, "skipped": r.skipped, "resumed": r.resumed, "error": r.error,
             "invalid": r.invalid, "pruned": [[dict(c), why] for c, why in r.pruned], "stopped": r.stopped}
            for r in results]
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(rows), encoding="utf-8")
    os.replace(tmp, path)


def load_results(path: Path, jobs: list) -> list:
    """The ``PointResult``s a worker wrote to ``path`` for the keys of ``jobs`` ([] if it wrote none)."""
    from flashcore.cache import TrialRecord

    from ..tuning.sweep import PointResult

    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # the worker failed before writing it: its exit code says so
        return []
    keys = {key.id: (point, key) for point, key in jobs}
    out = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict) or row.get("key_id") not in keys:
            continue
        point, key = keys[row["key_id"]]
        trials = [TrialRecord(key=key, **t) for t in row["trials"]]
        index = row["best_index"]
        best = trials[index] if index is not None else (TrialRecord(key=key, **row["best"]) if row["best"] else None)
        out.append(PointResult(point, key, trials=trials, best=best, valid_configs=row["valid_configs"],
                               skipped=row["skipped"], resumed=row["resumed"], error=row["error"],
                               invalid=row["invalid"], pruned=[(c, why) for c, why in row["pruned"]],
                               stopped=row["stopped"]))
    return out
