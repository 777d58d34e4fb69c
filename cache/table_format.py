"""The exported table format (JSON and CSV) that other teams consume, and its strict validation.

A table is ``{"format_version": 2, "provenance": {...}, "entries": [...]}``. Format 2 added the key/value
heads, the key/value length and the causal alignment of each entry (``kv_heads``, ``kv_len``,
``lower_right``); format 1 tables (which had none: every entry had kv_heads = heads, kv_len = seq_len) still
import. Everything read from outside is
validated before it becomes an ``Entry``; a problem raises TableError with one line naming the field, e.g.
``entries[3].median_us: expected a positive finite number, got -1.0``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ._errors import CacheError, TableError, TableTooLarge
from ._types import DTYPES, CacheKey, Entry, base_dtype

FORMAT_VERSION = 2
FIELDS_V1: tuple[str, ...] = (
    "gpu", "compute_capability", "kernel", "dtype", "causal", "batch", "heads", "seq_len", "head_dim",
    "config", "median_us", "p95_us", "p99_us", "tflops", "rel_err",
    "triton_version", "torch_version", "kernel_hash", "created_at",
)  # fmt: skip
FIELDS: tuple[str, ...] = (
    "gpu", "compute_capability", "kernel", "dtype", "causal", "lower_right", "batch", "heads", "kv_heads",
    "seq_len", "kv_len", "head_dim",
    "config", "median_us", "p95_us", "p99_us", "tflops", "rel_err",
    "triton_version", "torch_version", "kernel_hash", "created_at",
)  # fmt: skip
_FIELDS_OF = {1: FIELDS_V1, 2: FIELDS}
_TOP_KEYS = frozenset({"format_version", "provenance", "entries"})
_TEXT_FIELDS = ("gpu", "compute_capability", "kernel", "triton_version", "torch_version", "kernel_hash", "created_at")

MAX_ENTRIES = 100_000  # the format's bound; a reader may ask for fewer (read_table's max_entries)
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_TEXT = 128
MAX_US = 3.6e9  # one hour, in microseconds
MAX_DIM = 2**24
MAX_HEAD_DIM = 1024
MAX_TFLOPS = 1e5
MAX_REL_ERR = 10.0
MAX_CONFIG_KEYS = 32
MAX_CONFIG_INT = 4096
MAX_CONFIG_STR = 32
MAX_PROVENANCE_KEYS = 32
MAX_PROVENANCE_TEXT = 256

_NAME_RE = re.compile(r"[A-Za-z0-9_.+-]+")  # kernel, kernel_hash
_CONFIG_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_CONFIG_STR_RE = re.compile(r"[A-Za-z0-9_.+-]*")
_PROVENANCE_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


def _describe(value: Any) -> str:
    """A short, one-line, JSON-flavoured rendering of a (possibly hostile) value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        try:
            text = repr(value)
        except ValueError:  # an int too long to print
            return "a huge integer"
        return text if len(text) <= 40 else f"a number of {len(text)} digits"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a string of {len(value)} characters"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    return f"a {type(value).__name__}"


def _text(loc: str, value: Any, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT or not value.isprintable():
        raise TableError(f"{loc}: expected a non-empty printable string of at most {MAX_TEXT} characters, "
                         f"got {_describe(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise TableError(f"{loc}: expected only letters, digits and _ . + -, got {_describe(value)}")
    return value


def _int(loc: str, value: Any, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise TableError(f"{loc}: expected an integer in [{low}, {high}], got {_describe(value)}")
    return int(value)


def _float(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _timing(loc: str, value: Any) -> float:
    number = _float(value)
    if number is None or number <= 0:
        raise TableError(f"{loc}: expected a positive finite number, got {_describe(value)}")
    if number > MAX_US:
        raise TableError(f"{loc}: expected at most {MAX_US:.1e} µs (one hour), got {_describe(value)}")
    return number


def _bounded(loc: str, value: Any, low: float, high: float) -> float:
    number = _float(value)
    if number is None or not low <= number <= high:
        raise TableError(f"{loc}: expected a finite number in [{low:g}, {high:g}], got {_describe(value)}")
    return number


def _created_at(loc: str, value: Any) -> str:
    text = _text(loc, value)
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise TableError(f"{loc}: expected an ISO-8601 timestamp, got {_describe(value)}") from None
    return text


def _config(loc: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TableError(f"{loc}: expected an object, got {_describe(value)}")
    if len(value) > MAX_CONFIG_KEYS:
        raise TableError(f"{loc}: expected at most {MAX_CONFIG_KEYS} keys, got {len(value)}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _CONFIG_KEY_RE.fullmatch(key):
            raise TableError(f"{loc}: invalid key {_describe(key)} (expected an identifier of at most 32 characters)")
        where = f"{loc}.{key}"
        if isinstance(item, bool):
            out[key] = item
        elif isinstance(item, int):
            out[key] = _int(where, item, 0, MAX_CONFIG_INT)
        elif isinstance(item, str) and len(item) <= MAX_CONFIG_STR and _CONFIG_STR_RE.fullmatch(item):
            out[key] = item
        else:
            raise TableError(f"{where}: expected an integer in [0, {MAX_CONFIG_INT}], true/false, or a string of "
                             f"at most {MAX_CONFIG_STR} letters, digits and _ . + -, got {_describe(item)}")
    return out


def _parse_entry(loc: str, item: Any, version: int = FORMAT_VERSION) -> Entry:
    if not isinstance(item, dict):
        raise TableError(f"{loc}: expected an object, got {_describe(item)}")
    names = _FIELDS_OF[version]
    missing = [name for name in names if name not in item]
    if missing:
        raise TableError(f"{loc}: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    extra = sorted((key for key in item if key not in names), key=str)
    if extra:
        raise TableError(f"{loc}: unknown field {_describe(extra[0])}")
    text = {name: _text(f"{loc}.{name}", item[name]) for name in _TEXT_FIELDS
            if name not in ("created_at", "torch_version")}
    _text(f"{loc}.kernel", item["kernel"], _NAME_RE)
    _text(f"{loc}.kernel_hash", item["kernel_hash"], _NAME_RE)
    dtype = item["dtype"]
    if not isinstance(dtype, str) or not _known_dtype(dtype):
        raise TableError(f"{loc}.dtype: expected one of {', '.join(DTYPES)} (or fp8-tol<budget>), "
                         f"got {_describe(dtype)}")
    flags = {}
    for name in ("causal", "lower_right") if version >= 2 else ("causal",):
        if not isinstance(item[name], bool):
            raise TableError(f"{loc}.{name}: expected true or false, got {_describe(item[name])}")
        flags[name] = item[name]
    heads = _int(f"{loc}.heads", item["heads"], 1, MAX_DIM)
    seq_len = _int(f"{loc}.seq_len", item["seq_len"], 1, MAX_DIM)
    kv_heads, kv_len = heads, seq_len
    if version >= 2:
        kv_heads = _int(f"{loc}.kv_heads", item["kv_heads"], 1, MAX_DIM)
        kv_len = _int(f"{loc}.kv_len", item["kv_len"], 1, MAX_DIM)
        if heads % kv_heads:
            raise TableError(f"{loc}.kv_heads: expected a divisor of heads ({heads}), got {kv_heads}")
        if flags["lower_right"] and (not flags["causal"] or kv_len == seq_len):
            raise TableError(f"{loc}.lower_right: true only for causal attention with kv_len != seq_len")
    key = CacheKey(
        **text, dtype=dtype, **flags, batch=_int(f"{loc}.batch", item["batch"], 1, MAX_DIM), heads=heads,
        seq_len=seq_len, head_dim=_int(f"{loc}.head_dim", item["head_dim"], 1, MAX_HEAD_DIM),
        kv_heads=kv_heads, kv_len=kv_len,
    )  # fmt: skip
    median, p95, p99 = (_timing(f"{loc}.{name}", item[name]) for name in ("median_us", "p95_us", "p99_us"))
    if p95 < median:
        raise TableError(f"{loc}.p95_us: must be >= median_us, got {p95!r} < {median!r}")
    if p99 < p95:
        raise TableError(f"{loc}.p99_us: must be >= p95_us, got {p99!r} < {p95!r}")
    return Entry(
        key=key,
        config=_config(f"{loc}.config", item["config"]),
        median_us=median, p95_us=p95, p99_us=p99,
        tflops=_bounded(f"{loc}.tflops", item["tflops"], 0.0, MAX_TFLOPS),
        rel_err=_bounded(f"{loc}.rel_err", item["rel_err"], 0.0, MAX_REL_ERR),
        created_at=_created_at(f"{loc}.created_at", item["created_at"]),
        torch_version=_text(f"{loc}.torch_version", item["torch_version"]),
    )  # fmt: skip


def _parse_entries(items: Sequence[Any], version: int = FORMAT_VERSION,
                   max_entries: int | None = None) -> list[Entry]:
    limit = MAX_ENTRIES if max_entries is None else min(max_entries, MAX_ENTRIES)
    if len(items) > limit:  # before any entry is validated: a refusal costs nothing per entry
        raise TableTooLarge(f"entries: expected at most {limit} entries, got {len(items)}", len(items), limit,
                            hard=limit >= MAX_ENTRIES)
    out: list[Entry] = []
    seen: dict[CacheKey, int] = {}
    for index, item in enumerate(items):
        entry = _parse_entry(f"entries[{index}]", item, version)
        if entry.key in seen:
            raise TableError(f"entries[{index}]: duplicate key (same as entries[{seen[entry.key]}])")
        seen[entry.key] = index
        out.append(entry)
    return out


def _check_provenance(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TableError(f"provenance: expected an object, got {_describe(value)}")
    if len(value) > MAX_PROVENANCE_KEYS:
        raise TableError(f"provenance: expected at most {MAX_PROVENANCE_KEYS} keys, got {len(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or not _PROVENANCE_KEY_RE.fullmatch(key):
            raise TableError(f"provenance: invalid key {_describe(key)}")
        if not isinstance(item, str) or len(item) > MAX_PROVENANCE_TEXT or not item.isprintable():
            raise TableError(f"provenance.{key}: expected a printable string of at most {MAX_PROVENANCE_TEXT} "
                             f"characters, got {_describe(item)}")
    return dict(value)


def parse_table(obj: Any, *, max_entries: int | None = None) -> list[Entry]:
    """Validate a decoded table (the object ``json.load`` returns) and return its entries.

    Raises TableError with one line naming the first problem found; TableTooLarge (a TableError) before any
    entry is read when the table holds more than ``max_entries`` (default, and at most: ``MAX_ENTRIES``).
    """
    if not isinstance(obj, dict):
        raise TableError(f"top level: expected an object, got {_describe(obj)}")
    if "format_version" not in obj:
        raise TableError("format_version: missing")
    version = obj["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise TableError(f"format_version: expected an integer, got {_describe(version)}")
    if version not in _FIELDS_OF:
        raise TableError(f"unsupported format_version {_describe(version)} (this FlashCore reads "
                         f"{' and '.join(map(str, sorted(_FIELDS_OF)))})")
    unknown = sorted((key for key in obj if key not in _TOP_KEYS), key=str)
    if unknown:
        raise TableError(f"unknown top-level key {_describe(unknown[0])}")
    if "provenance" in obj:
        _check_provenance(obj["provenance"])
    if "entries" not in obj:
        raise TableError("entries: missing")
    if not isinstance(obj["entries"], list):
        raise TableError(f"entries: expected an array, got {_describe(obj['entries'])}")
    return _parse_entries(obj["entries"], version, max_entries)


def check_entries(entries: Sequence[Entry]) -> None:
    """Validate in-memory entries with the same rules as an import (raises TableError naming ``entries[i]``)."""
    _parse_entries([entry_to_dict(entry) for entry in entries])


class _DuplicateKey(Exception):
    pass


class _BadConstant(Exception):
    pass


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise _BadConstant(name)


def read_table(path: str | os.PathLike[str], *, max_entries: int | None = None) -> list[Entry]:
    """Read and validate a JSON table file; raises TableError (one line, naming the file) on any problem, and
    TableTooLarge (one) when it holds more than ``max_entries`` entries (see :func:`parse_table`)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise TableError(f"{p} is not a regular file")
        if size > MAX_FILE_BYTES:
            raise TableError(f"{p} is too large ({size} bytes; the limit is {MAX_FILE_BYTES // 2**20} MiB)")
        with p.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise TableError(f"cannot read {p}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise TableError(f"{p} is too large (over {MAX_FILE_BYTES // 2**20} MiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TableError(f"{p} is not JSON: not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_pairs_without_duplicates, parse_constant=_reject_constant)
    except _DuplicateKey as exc:
        raise TableError(f"{p}: duplicate key {_describe(exc.args[0])} in one JSON object") from None
    except _BadConstant as exc:
        raise TableError(f"{p} is not JSON: {exc.args[0]} is not a valid JSON value") from None
    except (ValueError, RecursionError) as exc:
        raise TableError(f"{p} is not JSON: {exc}") from None
    try:
        return parse_table(obj, max_entries=max_entries)
    except TableTooLarge as exc:
        raise TableTooLarge(f"{p}: {exc}", exc.entries, exc.limit, exc.hard) from None
    except TableError as exc:
        raise TableError(f"{p}: {exc}") from None


def entry_to_dict(e: Entry) -> dict[str, Any]:
    """One entry as a table row: exactly the FIELDS, in order, with ``config`` copied (not validated)."""
    key = e.key
    return {
        "gpu": key.gpu, "compute_capability": key.compute_capability, "kernel": key.kernel,
        "dtype": key.dtype, "causal": key.causal, "lower_right": key.lower_right, "batch": key.batch,
        "heads": key.heads, "kv_heads": key.kv_heads, "seq_len": key.seq_len, "kv_len": key.kv_len,
        "head_dim": key.head_dim, "config": dict(e.config),
        "median_us": e.median_us, "p95_us": e.p95_us, "p99_us": e.p99_us, "tflops": e.tflops,
        "rel_err": e.rel_err, "triton_version": key.triton_version, "torch_version": e.torch_version,
        "kernel_hash": key.kernel_hash, "created_at": e.created_at,
    }  # fmt: skip


def export_table(entries: Iterable[Entry], provenance: dict[str, str] | None = None) -> dict[str, Any]:
    """Build the exported table object; it is validated, so what we write is always readable (TableError if not)."""
    table: dict[str, Any] = {"format_version": FORMAT_VERSION}
    if provenance is not None:
        table["provenance"] = dict(provenance)
    table["entries"] = [entry_to_dict(entry) for entry in entries]
    parse_table(table)
    return table


def _write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    p = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a table is meant to be shared
            os.replace(tmp, p)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise CacheError(f"cannot write {p}: {exc.strerror or exc}") from None


def write_json(
    entries: Iterable[Entry], path: str | os.PathLike[str] | None, provenance: dict[str, str] | None = None
) -> str:
    """Serialise entries as a JSON table; write it to ``path`` unless it is None; return the text."""
    text = json.dumps(export_table(entries, provenance), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if path is not None:
        _write_text(path, text)
    return text


def write_csv(entries: Iterable[Entry], path: str | os.PathLike[str] | None) -> str:
    """Serialise entries as CSV (header = FIELDS, ``config`` as a JSON string); write to ``path`` unless None."""
    rows = export_table(entries)["entries"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIELDS)
    for row in rows:
        cells = []
        for name in FIELDS:
            value = row[name]
            if name == "config":
                cells.append(json.dumps(value, sort_keys=True, separators=(",", ":")))
            elif isinstance(value, bool):
                cells.append("true" if value else "false")
            else:
                cells.append(repr(value) if isinstance(value, float) else str(value))
        writer.writerow(cells)
    text = buffer.getvalue()
    if path is not None:
        _write_text(path, text)
    return text


def _known_dtype(dtype: str) -> bool:
    """A dtype a key may carry: float16, bfloat16, fp8, or fp8 under another error budget (canonical label)."""
    try:
        return len(dtype) <= MAX_TEXT and base_dtype(dtype) in DTYPES
    except ValueError:
        return False
