"""Lookup misses: shapes get_kernel served by "nearest" or "default", so a later sweep can cover them.

Each miss is one JSON line appended to ``<cache file>.misses.jsonl`` (an append of one short line is atomic
across processes). Recording never raises into model code and never creates a directory.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import Counter
from pathlib import Path

_WARNED = False


def misses_path(db_path: str | os.PathLike) -> Path:
    return Path(f"{db_path}.misses.jsonl")


def record_miss(db_path: str | os.PathLike, *, shape: tuple[int, ...], dtype: str, causal: bool, gpu: str,
                kernel: str, source: str, kv_heads: int | None = None, kv_len: int | None = None,
                lower_right: bool = False) -> None:
    """Append one miss; a read-only or missing cache directory only costs a warning, once."""
    global _WARNED
    path = misses_path(db_path)
    if not path.parent.is_dir():
        return
    line = json.dumps({"batch": shape[0], "heads": shape[1], "seq_len": shape[2], "head_dim": shape[3],
                       "kv_heads": kv_heads or shape[1], "kv_len": kv_len or shape[2], "lower_right": lower_right,
                       "dtype": dtype, "causal": causal, "gpu": gpu, "kernel": kernel, "source": source,
                       "time": round(time.time(), 3)}, sort_keys=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError as exc:
        if not _WARNED:
            _WARNED = True
            warnings.warn(f"FlashCore: cannot record lookup misses in {path}: {exc}", RuntimeWarning, stacklevel=5)


def read_misses(db_path: str | os.PathLike) -> list[tuple[dict, int]]:
    """Distinct missed points (without time and source) with how often each was missed, most frequent first.

    Lines that are not valid miss records (a torn write, a hand edit) are skipped.
    """
    path = misses_path(db_path)
    if not path.exists():
        return []
    counts: Counter = Counter()
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
                key = (int(rec["batch"]), int(rec["heads"]), int(rec["seq_len"]), int(rec["head_dim"]),
                       str(rec["dtype"]), bool(rec["causal"]), str(rec["gpu"]), str(rec["kernel"]),
                       int(rec.get("kv_heads") or rec["heads"]), int(rec.get("kv_len") or rec["seq_len"]),
                       bool(rec.get("lower_right", False)))  # lines of older versions have none of the three
            except (ValueError, KeyError, TypeError):
                continue
            counts[key] += 1
    names = ("batch", "heads", "seq_len", "head_dim", "dtype", "causal", "gpu", "kernel", "kv_heads", "kv_len",
             "lower_right")
    return [(dict(zip(names, key)), n) for key, n in counts.most_common()]
