"""Lookup misses: shapes get_kernel served by "nearest" or "default", so a later sweep can cover them.

Each miss is one JSON line appended to ``<cache file>.misses.jsonl`` (an append of one short line is atomic
across processes). Recording never raises into model code, never creates a directory, and writes only into a
regular file the user owns: a symlink, a FIFO, a device or someone else's file planted at that path is left
alone (one RuntimeWarning per path).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
import warnings
from collections import Counter
from pathlib import Path

_WARNED: set[str] = set()  # the misses files already warned about (once each per process)
_OPEN_FLAGS = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_CLOEXEC", 0))


def misses_path(db_path: str | os.PathLike) -> Path:
    return Path(f"{db_path}.misses.jsonl")


def record_miss(db_path: str | os.PathLike, *, shape: tuple[int, ...], dtype: str, causal: bool, gpu: str,
                kernel: str, source: str, kv_heads: int | None = None, kv_len: int | None = None,
                lower_right: bool = False) -> None:
    """Append one miss to ``<db_path>.misses.jsonl``.

    Writes only into a regular file owned by this user, opened without following a symlink (O_NOFOLLOW) and
    without blocking on a FIFO (O_NONBLOCK), then checked with fstat; anything else there, a read-only or
    missing directory, or a failed write costs one RuntimeWarning per path and nothing else. Never raises.
    """
    path = misses_path(db_path)
    try:
        if not path.parent.is_dir():
            return
        line = json.dumps({"batch": shape[0], "heads": shape[1], "seq_len": shape[2], "head_dim": shape[3],
                           "kv_heads": kv_heads or shape[1], "kv_len": kv_len or shape[2],
                           "lower_right": lower_right, "dtype": dtype, "causal": causal, "gpu": gpu, "kernel": kernel,
                           "source": source, "time": round(time.time(), 3)}, sort_keys=True)
        fd = os.open(path, _OPEN_FLAGS, 0o644)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _Refused("it is not a regular file")
            if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
                raise _Refused(f"it belongs to user {info.st_uid}, not to this user ({os.geteuid()})")
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except (OSError, ValueError, TypeError, IndexError, _Refused) as exc:
        if str(path) not in _WARNED:
            _WARNED.add(str(path))
            why = exc
            if isinstance(exc, OSError):
                why = {errno.ELOOP: "it is a symbolic link", errno.ENXIO: "it is not a regular file"}.get(
                    exc.errno, exc.strerror or exc)
            warnings.warn(f"FlashCore: not recording lookup misses in {path}: {why}", RuntimeWarning, stacklevel=5)


class _Refused(Exception):
    """The misses file is not one we may write into (the message says why)."""


def read_misses(db_path: str | os.PathLike, *, drop_tuned: bool = False) -> list[tuple[dict, int]]:
    """Distinct missed points (without time and source) with how often each was missed, most frequent first.

    Lines that are not valid miss records (a torn write, a hand edit) are skipped. ``drop_tuned`` leaves out
    the points that have since been tuned: those where the cache at ``db_path`` (read now, read-only) holds an
    exact winner for the miss's GPU that get_kernel would serve there (servable by this process, ``usable``,
    of a family that can compute the point).
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
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                continue
            counts[key] += 1
    names = ("batch", "heads", "seq_len", "head_dim", "dtype", "causal", "gpu", "kernel", "kv_heads", "kv_len",
             "lower_right")
    misses = [(dict(zip(names, key)), n) for key, n in counts.most_common()]
    if drop_tuned and misses:
        from .index import read_index

        index = read_index(db_path)
        misses = [(m, n) for m, n in misses if not _tuned(index, m)]
    return misses


def _tuned(index, miss: dict) -> bool:
    """Whether ``index`` holds an exact winner get_kernel would serve at ``miss``'s point on ``miss["gpu"]``."""
    from flashcore.kernels import get_family

    from ..core.problem import Point
    from .index import exact_key, usable

    point = Point(miss["batch"], miss["heads"], miss["seq_len"], miss["head_dim"], miss["causal"], miss["dtype"],
                  miss["kv_heads"], miss["kv_len"], miss["lower_right"])
    for entry in index.exact.get(exact_key(miss["gpu"], point), ()):
        family = get_family(entry.key.kernel)
        if family.supports(point.heads, point.kv_heads, point.seq_len, point.kv_len, point.head_dim) is None \
                and usable(entry):
            return True
    return False
