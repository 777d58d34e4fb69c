"""The exported table format: exact round trips, CSV shape, and refusal of hostile imports."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import flashcore.cache.table_format
from flashcore.cache import (
    FORMAT_VERSION,
    CacheError,
    CacheKey,
    CacheStore,
    Entry,
    TableError,
    entry_to_dict,
    export_table,
    parse_table,
    read_table,
    write_csv,
    write_json,
)
from flashcore.cache.table_format import FIELDS

SQL_GPU = "x'); DROP TABLE winners;--"


def entries() -> list[Entry]:
    out = []
    for i, (dtype, causal) in enumerate([("float16", True), ("bfloat16", False), ("fp8", True)]):
        key = CacheKey(
            gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", triton_version="3.1.0",
            kernel="attention_fwd", kernel_hash="9f86d081884c7d65", dtype=dtype, causal=causal,
            head_dim=64 * (i + 1), seq_len=1024 << i, batch=2, heads=16,
        )  # fmt: skip
        config = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4 << (i % 2), "num_stages": 3, "warp_spec": i == 1,
                  "schedule": "persistent"}  # fmt: skip
        out.append(Entry(key, config, 100.125 + i, 110.5 + i, 120.0 + i, 333.3, 1e-3 * (i + 1),
                         f"2025-03-0{i + 1}T08:30:00+00:00", torch_version="2.5.1+cu124"))  # fmt: skip
    return out


def valid_table() -> dict[str, Any]:
    return export_table(entries(), provenance={"host": "node-7", "flashcore": "0.1.0"})


# -- round trips ---------------------------------------------------------------------------------------------


def test_export_parse_round_trip_is_exact(tmp_path: Path) -> None:
    original = entries()
    assert parse_table(export_table(original)) == original
    path = tmp_path / "table.json"
    text = write_json(original, path, provenance={"host": "node-7"})
    assert path.read_text(encoding="utf-8") == text
    assert read_table(path) == original
    obj = json.loads(text)
    assert obj["format_version"] == FORMAT_VERSION == 2
    assert obj["provenance"] == {"host": "node-7"}
    assert all(list(item) == list(FIELDS) for item in obj["entries"])
    assert write_json(original, None) == write_json(original, None)  # deterministic


def test_round_trip_through_store(tmp_path: Path) -> None:
    with CacheStore.open(tmp_path / "a.db") as a, CacheStore.open(tmp_path / "b.db") as b:
        for e in entries():
            a.put_winner(e)
        path = tmp_path / "t.json"
        write_json(a.winners(), path)
        assert b.import_entries(read_table(path), replace=False) == 3
        assert b.winners() == a.winners()


def test_entry_to_dict_has_exactly_the_fields() -> None:
    item = entry_to_dict(entries()[0])
    assert tuple(item) == FIELDS and len(FIELDS) == 22
    item["config"]["BLOCK_M"] = 1  # a copy: the entry is not touched
    assert entries()[0].config["BLOCK_M"] == 128


def test_csv_export(tmp_path: Path) -> None:
    original = entries()
    path = tmp_path / "table.csv"
    text = write_csv(original, path)
    assert path.read_text(encoding="utf-8") == text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(FIELDS)
    assert len(rows) == 1 + len(original)
    for row, entry in zip(rows[1:], original):
        record = dict(zip(FIELDS, row))
        assert json.loads(record["config"]) == entry.config
        assert record["causal"] == ("true" if entry.key.causal else "false")
        assert float(record["median_us"]) == entry.median_us and record["gpu"] == entry.key.gpu


def test_export_refuses_invalid_entries() -> None:
    bad = entries()
    bad[1] = Entry(bad[1].key, {"BLOCK_M": 10**9}, 1.0, 1.0, 1.0, 1.0, 0.0, "2025-01-01T00:00:00Z")
    with pytest.raises(TableError, match=r"entries\[1\]\.config\.BLOCK_M"):
        write_json(bad, None)


def test_sql_text_in_gpu_is_stored_verbatim(tmp_path: Path) -> None:
    table = valid_table()
    table["entries"][0]["gpu"] = SQL_GPU
    parsed = parse_table(table)
    assert parsed[0].key.gpu == SQL_GPU
    with CacheStore.open(tmp_path / "c.db") as store:
        assert store.import_entries(parsed, replace=True) == 3
        names = set(store._conn_db().table_names())
        assert {"winners", "trials", "meta"} <= names
        assert store.winners(gpu=SQL_GPU) == [parsed[0]]
        assert store.get_winner(parsed[0].key).key.gpu == SQL_GPU
        assert len(store.winners()) == 3
        assert parse_table(export_table(store.winners(gpu=SQL_GPU)))[0].key.gpu == SQL_GPU


# -- hostile imports -----------------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], Any]


def _set(field: str, value: Any, index: int = 0) -> Mutation:
    def mutate(table: dict[str, Any]) -> None:
        table["entries"][index][field] = value

    return mutate


def _config(key: str, value: Any) -> Mutation:
    def mutate(table: dict[str, Any]) -> None:
        table["entries"][0]["config"][key] = value

    return mutate


def _drop(field: str) -> Mutation:
    return lambda table: table["entries"][0].pop(field)


def _top(key: str, value: Any) -> Mutation:
    return lambda table: table.__setitem__(key, value)


def _duplicate(table: dict[str, Any]) -> None:
    table["entries"].append(copy.deepcopy(table["entries"][0]))


HOSTILE = [
    pytest.param(_set("head_dim", "64"), r"entries\[0\]\.head_dim: expected an integer", id="wrong-type-head_dim"),
    pytest.param(_set("head_dim", 64.0), r"entries\[0\]\.head_dim: expected an integer", id="float-for-int"),
    pytest.param(_set("batch", 0), r"entries\[0\]\.batch", id="batch-zero"),
    pytest.param(_set("seq_len", 2**24 + 1), r"entries\[0\]\.seq_len", id="seq_len-too-big"),
    pytest.param(_set("head_dim", 2048), r"entries\[0\]\.head_dim", id="head_dim-too-big"),
    pytest.param(_drop("p99_us"), r"entries\[0\]: missing field p99_us", id="missing-field"),
    pytest.param(_set("evil", 1), r"entries\[0\]: unknown field 'evil'", id="extra-field"),
    pytest.param(_set("median_us", -1.0, index=2),
                 r"^entries\[2\]\.median_us: expected a positive finite number, got -1\.0$", id="negative-timing"),
    pytest.param(_set("median_us", 0), r"entries\[0\]\.median_us: expected a positive", id="zero-timing"),
    pytest.param(_set("p95_us", float("nan")), r"entries\[0\]\.p95_us: .* got nan", id="nan"),
    pytest.param(_set("p99_us", float("inf")), r"entries\[0\]\.p99_us: .* got inf", id="inf"),
    pytest.param(_set("median_us", 4e9), r"entries\[0\]\.median_us: expected at most", id="timing-over-an-hour"),
    pytest.param(_set("p95_us", 50.0), r"entries\[0\]\.p95_us: must be >= median_us", id="p95-below-median"),
    pytest.param(_set("p99_us", 110.0), r"entries\[0\]\.p99_us: must be >= p95_us", id="p99-below-p95"),
    pytest.param(_set("tflops", -1), r"entries\[0\]\.tflops", id="negative-tflops"),
    pytest.param(_set("rel_err", 11.0), r"entries\[0\]\.rel_err", id="rel_err-too-big"),
    pytest.param(_set("median_us", "100"), r"entries\[0\]\.median_us: .* got '100'", id="timing-as-string"),
    pytest.param(_config("BLOCK_M", 10**9), r"entries\[0\]\.config\.BLOCK_M: .* got 1000000000", id="BLOCK_M-1e9"),
    pytest.param(_config("BLOCK_M", -1), r"entries\[0\]\.config\.BLOCK_M", id="BLOCK_M-negative"),
    pytest.param(_config("BLOCK_M", 1.5), r"entries\[0\]\.config\.BLOCK_M", id="config-float"),
    pytest.param(_config("BLOCK_M", None), r"entries\[0\]\.config\.BLOCK_M", id="config-null"),
    pytest.param(_config("BLOCK_M", [1]), r"entries\[0\]\.config\.BLOCK_M", id="config-array"),
    pytest.param(_config("x" * 40, 1), r"entries\[0\]\.config: invalid key", id="config-long-key"),
    pytest.param(_config("__import__('os')", 1), r"entries\[0\]\.config: invalid key", id="config-code-key"),
    pytest.param(_config("sched", "a;b"), r"entries\[0\]\.config\.sched", id="config-bad-string"),
    pytest.param(_set("config", {f"k{i}": 1 for i in range(33)}), r"entries\[0\]\.config: expected at most 32",
                 id="config-too-many-keys"),
    pytest.param(_set("config", [1, 2]), r"entries\[0\]\.config: expected an object", id="config-not-object"),
    pytest.param(_top("format_version", 7), r"unsupported format_version 7 \(this FlashCore reads 1 and 2\)",
                 id="unknown-format_version"),
    pytest.param(_top("format_version", True), r"format_version: expected an integer", id="format_version-bool"),
    pytest.param(lambda t: t.pop("format_version"), r"format_version: missing", id="no-format_version"),
    pytest.param(_top("extra", 1), r"unknown top-level key 'extra'", id="unknown-top-level-key"),
    pytest.param(_top("entries", {}), r"entries: expected an array", id="entries-not-array"),
    pytest.param(lambda t: t.pop("entries"), r"entries: missing", id="no-entries"),
    pytest.param(_top("provenance", {"host": "a\nb"}), r"provenance\.host", id="provenance-control-char"),
    pytest.param(_top("provenance", ["x"]), r"provenance: expected an object", id="provenance-not-object"),
    pytest.param(_set("gpu", "H" * 10_000), r"entries\[0\]\.gpu: .* got a string of 10000 characters",
                 id="10k-char-string"),
    pytest.param(_set("gpu", ""), r"entries\[0\]\.gpu", id="empty-string"),
    pytest.param(_set("gpu", "H100\x1b[2J"), r"entries\[0\]\.gpu", id="control-char"),
    pytest.param(_set("torch_version", "2.5\u202e1"), r"entries\[0\]\.torch_version", id="bidi-override"),
    pytest.param(_set("kernel", "attn fwd"), r"entries\[0\]\.kernel: expected only", id="kernel-charset"),
    pytest.param(_set("kernel_hash", "../../etc"), r"entries\[0\]\.kernel_hash: expected only", id="hash-charset"),
    pytest.param(_set("dtype", "int8"), r"entries\[0\]\.dtype: expected one of float16", id="unknown-dtype"),
    pytest.param(_set("created_at", "yesterday"), r"entries\[0\]\.created_at: expected an ISO-8601", id="bad-date"),
    pytest.param(_set("causal", 1), r"entries\[0\]\.causal: expected true or false, got 1", id="bool-given-as-1"),
    pytest.param(_set("causal", "true"), r"entries\[0\]\.causal", id="bool-given-as-string"),
    pytest.param(_set("heads", True), r"entries\[0\]\.heads: expected an integer", id="int-given-as-bool"),
    pytest.param(_duplicate, r"entries\[3\]: duplicate key \(same as entries\[0\]\)", id="duplicate-entries"),
    pytest.param(lambda t: t["entries"].__setitem__(1, "x"), r"entries\[1\]: expected an object", id="entry-string"),
]


@pytest.mark.parametrize(("mutate", "message"), HOSTILE)
def test_hostile_table_is_rejected(mutate: Mutation, message: str) -> None:
    table = valid_table()
    mutate(table)
    with pytest.raises(TableError, match=message) as info:
        parse_table(table)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize(("mutate", "message"), HOSTILE)
def test_hostile_file_is_rejected(tmp_path: Path, mutate: Mutation, message: str) -> None:
    table = valid_table()
    mutate(table)
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table), encoding="utf-8")  # json.dumps writes NaN/Infinity, which we refuse
    with pytest.raises(TableError) as info:
        read_table(path)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text
    if message.endswith(("got nan", "got inf")):
        assert "is not JSON: " in text  # the file holds NaN / Infinity literals, refused by the JSON reader
    else:
        assert re.search(message.lstrip("^"), text), text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"\xff\xfe\x00garbage", r"is not JSON: not UTF-8", id="not-utf8"),
        pytest.param(b"gpu,kernel\nH100,fwd\n", r"is not JSON: Expecting value", id="csv-not-json"),
        pytest.param(b"", r"is not JSON", id="empty-file"),
        pytest.param(b'{"format_version": 1, "entries": [', r"is not JSON", id="truncated-json"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, r"is not JSON", id="deep-nesting"),
        pytest.param(b'{"format_version": 1, "entries": [], "entries": []}', r"duplicate key 'entries'",
                     id="duplicate-json-key"),
        pytest.param(b'{"format_version": 1, "entries": [{"median_us": NaN}]}', r"is not JSON: NaN", id="NaN-literal"),
        pytest.param(b'{"format_version": 1, "entries": [{"median_us": -Infinity}]}', r"is not JSON: -Infinity",
                     id="Infinity-literal"),
        pytest.param(b'{"format_version": 1, "entries": [{"batch": 1' + b"0" * 5000 + b"}]}", r"is not JSON",
                     id="huge-integer"),
        pytest.param(b"[]", r"top level: expected an object, got an array", id="top-level-array"),
        pytest.param(b'{"format_version": 1, "entries": []}', None, id="empty-table-is-fine"),
    ],
)
def test_raw_file_contents(tmp_path: Path, content: bytes, message: str | None) -> None:
    path = tmp_path / "table.json"
    path.write_bytes(content)
    if message is None:
        assert read_table(path) == []
        return
    with pytest.raises(TableError, match=message) as info:
        read_table(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_too_many_entries_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flashcore.cache.table_format, "MAX_ENTRIES", 2)
    with pytest.raises(TableError, match=r"entries: expected at most 2 entries, got 3"):
        parse_table(valid_table())


def test_oversized_file_rejected_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 2048)
    monkeypatch.setattr(flashcore.cache.table_format, "MAX_FILE_BYTES", 1024)
    monkeypatch.setattr(Path, "open", lambda *a, **k: pytest.fail("read an oversized file"))
    with pytest.raises(TableError, match=r"too large"):
        read_table(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="cannot read"):
        read_table(tmp_path / "nope.json")
    with pytest.raises(TableError, match="not a regular file"):
        read_table(tmp_path)


def test_table_error_is_a_cache_error() -> None:
    assert issubclass(TableError, CacheError)
    assert str(CacheError("a\nb")) == "a b"
