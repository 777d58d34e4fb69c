"""A large cache serves what a small one would, its first get_kernel stays short, and `autotune import` checks a
table's entries once.

get_kernel's "nearest" lookup orders the entries of the point's group (dtype, distance, cache before shipped
tables) and judges each one's config (``index.usable``: its family's rules) only until the answer is decided, so a
cache of thousands of entries in one group is not judged row by row on the first call of every process. The
candidate served must be exactly the one of the rule that judged every row first: ``old_rule`` below spells that
rule out (the lookup as it was before the lazy walk) and is compared with get_kernel over a ~5,000-entry group:
exact hits, nearest points within reach of our configs, points whose nearest rows are ones a family cannot run,
ties of distance, the other 16-bit dtype, another head grouping, far points and points of other groups.
"""

from __future__ import annotations

import dataclasses
import random
import time
import warnings

import pytest
import torch

from flashcore.autotune import PROFILES, Point, clear_cache, get_kernel
from flashcore.autotune.cli.app import main
from flashcore.autotune.core.problem import distance
from flashcore.autotune.core.toolchain import make_key, now_iso
from flashcore.autotune.runtime.index import (cache_index, exact_key, group_key, shipped_index, unusable_reason,
                                              usable)
from flashcore.autotune.runtime.paths import resolve_db
from flashcore.cache import CacheStore, Entry, TableError, read_table, write_json
from flashcore.kernels import families, get_family
from flashcore.kernels import load_space

GPU = "NVIDIA H200 (test)"  # an H200 by its profile, and no shipped table's entries
OWN_REACH, OWN_MARGIN = 2.0, 0.97  # dispatch's, restated: the rule below is written out in full
SPACE = load_space(get_family("attention_fwd").space)


def own(point: Point, median: float, **changes) -> Entry:
    config = {**SPACE.default_for(point, PROFILES["h200"]), **changes}
    config = {k: v for k, v in config.items() if v is not ...}
    return _entry(point, "attention_fwd", config, median)


def backend(point: Point, kernel: str, median: float, config: dict | None = None) -> Entry:
    return _entry(point, kernel, config or {}, median)


def _entry(point: Point, kernel: str, config: dict, median: float) -> Entry:
    key = make_key(point, get_family(kernel), GPU, "9.0")
    return Entry(key, config, median, median, median, 1.0, 1e-4, now_iso())


def at(b, h, s, dtype="float16", **kw) -> Point:
    return Point(b, h, s, 64, True, dtype, **kw)


# Neighbourhood of the queries (causal, head dim 64, q and k of one length: one group with the background).
NEIGHBOURS = [
    own(at(2, 8, 1024), 90.0), backend(at(2, 8, 1024), "sdpa_cudnn", 100.0),
    backend(at(2, 8, 1024), "sdpa_flash", 130.0),
    own(at(4, 8, 1024), 80.0, EXTRA=1),  # an unknown config key: never served
    backend(at(4, 8, 1024), "sdpa_cudnn", 100.0),
    own(at(2, 8, 720), 50.0, LOADS=...),  # a missing config key: the nearest row of (2, 8, 700), not servable
    backend(at(2, 8, 720), "sdpa_flash", 60.0, {"BLOCK_M": 64}),  # a backend takes no config
    own(at(2, 8, 4096), 300.0), backend(at(2, 8, 4096), "sdpa_cudnn", 400.0),  # 2048 lies halfway: a tie
    backend(at(2, 8, 4096), "sdpa_flash", 450.0),
    own(at(2, 8, 512), 20.0, EXTRA=2), own(at(2, 8, 256), 9.0),  # 512 cannot run; 256 and 1024 tie around it
    own(at(2, 8, 1100, "bfloat16"), 85.0), backend(at(2, 8, 1100, "bfloat16"), "sdpa_cudnn", 99.0),
    own(at(8, 8, 1024), 99.0), backend(at(8, 8, 1024), "sdpa_cudnn", 100.0),  # ours within the noise
]
QUERIES = [
    (at(2, 8, 1024), None),            # exact: ours, ahead of the backends
    (at(4, 8, 1024), None),            # exact, ours not servable: the backend measured there
    (at(8, 8, 1024), None),            # exact, ours within the noise: the backend
    (at(2, 8, 1400), None),            # nearest, ours within reach
    (at(3, 8, 1024), None),            # nearest between two tuned points
    (at(2, 8, 700), None),             # the nearest rows cannot run: the next point
    (at(2, 8, 700), "own"),
    (at(2, 8, 700), "attention_fwd"),
    (at(2, 8, 2048), None),            # a tie of distance (1024 and 4096): the first in the cache's order
    (at(2, 8, 512), None),             # its own row cannot run, then a tie (256 and 1024)
    (at(2, 8, 1100), None),            # float16 prefers its own dtype over the exact bfloat16 point
    (at(2, 8, 1100, "bfloat16"), None),  # exact bfloat16
    (at(2, 8, 1300, "bfloat16"), None),  # nearest bfloat16
    (at(2, 8, 1024, kv_heads=2), None),  # another head grouping: ours does not travel
    (at(2, 8, 64), None),              # far: the backend travels, ours does not
    (at(2, 8, 64), "own"),             # far, ours asked for: the nearest of ours at any distance
    (at(64, 32, 30000), None),         # among the background rows
    (at(64, 32, 30000), "own"),
    (at(1, 1, 100000), None),          # beyond every row
    (Point(2, 8, 1024, 128, True), None),  # another head dim: nothing of its group, SDPA's own choice
    (at(2, 8, 1, kv_len=3000, lower_right=True), None),  # a KV cache: another group
    (Point(2, 8, 1024, 64, False), None),  # no mask: another group
    (Point(2, 8, 1024, 128, True), "own"),
]


def background(n: int, seed: int = 0) -> list[Entry]:
    """``n`` rows of the same group at other points (longer sequences, any batch and heads): our default config
    mostly, some backends, and one in 20 a row its family cannot run."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        point = at(2 ** rng.randrange(8), rng.choice([1, 2, 4, 8, 16, 32, 48, 64]), rng.randrange(4096, 65536))
        kind = rng.random()
        if kind < 0.05:
            entry = own(point, rng.uniform(50, 5000), **rng.choice([{"EXTRA": 1}, {"LOADS": ...}]))
        elif kind < 0.25:
            entry = backend(point, rng.choice(["sdpa_cudnn", "sdpa_flash"]), rng.uniform(50, 5000))
        else:
            entry = own(point, rng.uniform(50, 5000))
        if entry.key not in seen:
            seen.add(entry.key)
            out.append(entry)
    return out


@pytest.fixture(scope="module")
def large_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("large") / "c.db"
    entries = NEIGHBOURS + background(5000 - len(NEIGHBOURS))
    with CacheStore.open(path) as store:
        assert store.import_entries(entries, replace=True) == len(entries)
    return path


def _served(db, point: Point, kernel: str | None):
    return get_kernel((point.batch, point.heads, point.seq_len, point.head_dim), getattr(torch, point.dtype),
                      point.causal, gpu=GPU, db=db, kernel=kernel, kv_heads=point.kv_heads, kv_len=point.kv_len,
                      lower_right=point.lower_right)


def old_rule(db, point: Point, kernel: str | None) -> tuple:
    """What get_kernel served before the lazy walk: every row of the group judged first, then the nearest."""
    fp8 = point.dtype.startswith("fp8")
    if kernel not in (None, "own"):
        allowed = {kernel}
    else:
        allowed = {f.name for f in families() if (kernel is None or f.kind != "backend")
                   and (("fp8" in f.dtypes) == fp8)}
    is_backend = lambda e: get_family(e.key.kernel).kind == "backend"  # noqa: E731
    fastest = lambda es: min(es, key=lambda e: e.median_us)  # noqa: E731

    def can(e):
        return (e.key.kernel in allowed and get_family(e.key.kernel).supports(
            point.heads, point.kv_heads, point.seq_len, point.kv_len, point.head_dim) is None and usable(e))

    def ahead(es):
        best, theirs = fastest(es), [e for e in es if is_backend(e)]
        if not theirs or is_backend(best):
            return best
        return best if best.median_us <= OWN_MARGIN * fastest(theirs).median_us else fastest(theirs)

    def best_backend(es):
        theirs = [e for e in es if is_backend(e)]
        return fastest(theirs) if theirs else None

    def same_point(a, b):
        ka, kb = a.key, b.key
        return (ka.gpu, ka.dtype, ka.batch, ka.heads, ka.kv_heads, ka.seq_len, ka.kv_len) == (
            kb.gpu, kb.dtype, kb.batch, kb.heads, kb.kv_heads, kb.seq_len, kb.kv_len)

    indexes = (("exact", cache_index(str(resolve_db(db)))), ("shipped", shipped_index()))
    for source, index in indexes:
        found = [e for e in index.exact.get(exact_key(GPU, point), ()) if can(e)]
        if found:
            return source, ahead(found) if kernel is None else fastest(found), \
                best_backend(found) if kernel is None else None, False
    rows = [(rank, e) for rank, (_, index) in enumerate(indexes) for e in index.groups.get(group_key(GPU, point), ())]
    near = [(rank, e) for rank, e in rows if can(e)]
    if not near:
        return "default", None, None, False

    def order(item):
        rank, e = item
        return (e.key.dtype != point.dtype, distance(e.key, point), rank)

    first = min(near, key=order)
    skipped = min(rows, key=order)[1] is not first[1]  # the first row in order is not servable
    where = order(first)
    at_first = [e for rank, e in near if order((rank, e)) == where and same_point(e, first[1])]
    if kernel is not None:
        entry = fastest(at_first)
    else:
        entry = ahead(at_first)
        if not is_backend(entry) and not (distance(entry.key, point) <= OWN_REACH
                                          and entry.key.heads // entry.key.kv_heads == point.heads // point.kv_heads):
            theirs = [e for e in at_first if is_backend(e)]
            entry = fastest(theirs) if theirs else None
    if entry is None:
        return "default", None, None, skipped
    alt = None
    if kernel is None:
        alt = best_backend([e for _, e in rows if same_point(e, entry) and can(e)])
    return "nearest", entry, alt, skipped


def _what(entry: Entry | None):
    return None if entry is None else (entry.key, entry.median_us, entry.config)


def test_a_large_group_serves_what_judging_every_row_first_served(large_db):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the rows a family cannot run are named once each
        sources, skips, alternatives = set(), 0, 0
        for point, kernel in QUERIES:
            k = _served(large_db, point, kernel)
            source, entry, alt, skipped = old_rule(large_db, point, kernel)
            label = f"{point.label} kernel={kernel}"
            if entry is None:  # no tuned candidate: SDPA's own choice, or our default config
                assert (k.source, k.entry, k.backend_entry) == ("default", None, None), (label, k)
            else:
                assert (k.source, _what(k.entry), _what(k.backend_entry), k.kernel, k.config) == (
                    source, _what(entry), _what(alt), entry.key.kernel, entry.config), (label, k, entry)
            sources.add((source, "backend" if entry is None or k.backend else "own"))
            skips += skipped
            alternatives += source == "nearest" and alt is not None
    # the queries cover every way of serving, and walks past rows a family cannot run
    assert {("exact", "own"), ("exact", "backend"), ("nearest", "own"), ("nearest", "backend"),
            ("default", "backend")} <= sources, sources
    assert skips >= 2 and alternatives >= 2, (skips, alternatives)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = cache_index(str(resolve_db(large_db))).groups[group_key(GPU, at(2, 8, 1024))]
        assert len(rows) > 4900 and sum(not usable(e) for e in rows) > 100  # one group, with rows not servable


def test_a_nearest_lookup_judges_only_the_rows_it_needs(large_db, monkeypatch):
    """The rows judged (``index.usable``) by a first lookup: the nearest ones until the answer is decided, not the
    group's 5,000 (what the lookup did before the lazy walk; the timing below cannot tell them apart reliably)."""
    from flashcore.autotune.runtime import index

    judged = []
    judge = index.usable
    monkeypatch.setattr(index, "usable", lambda entry: judged.append(entry) or judge(entry))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for point, kernel in [(at(64, 32, 30000), None), (at(2, 8, 700), None), (at(2, 8, 64), "own"),
                              (at(1, 1, 100000), None), (at(2, 8, 512), None)]:
            clear_cache()
            judged.clear()
            assert _served(large_db, point, kernel).source in ("nearest", "default")
            assert 0 < len(judged) <= 20, (point.label, kernel, len(judged))


@pytest.mark.slow  # a timing: generous, but a loaded 2-core machine may still miss it
def test_the_first_get_kernel_on_a_large_group_is_short(large_db):
    """The first lookup of a process on a 5,000-entry group: reading the cache and one walk. Measured on a loaded
    2-core machine: 0.3-0.4 s (0.55-0.7 s when every row of the group was judged first)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        best = float("inf")
        for _ in range(2):  # the better of two tries: a timing on a shared machine
            clear_cache()  # as in a fresh process: nothing read, nothing judged
            started = time.perf_counter()
            k = _served(large_db, at(64, 32, 30000), None)
            best = min(best, time.perf_counter() - started)
            assert k.source == "nearest"
    assert best < 1.0, f"the first get_kernel took {best:.2f} s on a 5,000-entry group"


# -- import: the table's entries are checked once ----------------------------------------------------------------

def test_import_entries_can_take_entries_read_table_checked(tmp_path):
    entries = NEIGHBOURS[:3] + background(20, seed=1)
    table = tmp_path / "t.json"
    write_json(entries, table)
    read = read_table(table)
    stores = {}
    for validated in (False, True):
        with CacheStore.open(tmp_path / f"{validated}.db") as store:
            assert store.import_entries(read, replace=False, validated=validated) == len(entries)
            stores[validated] = store.winners()
    assert stores[True] == stores[False] and len(stores[True]) == len(entries)
    # the default checks every entry; validated=True takes the caller's word (the check read_table made)
    bad = dataclasses.replace(entries[0], p95_us=entries[0].median_us / 2)
    with CacheStore.open(tmp_path / "bad.db") as store:
        with pytest.raises(TableError, match=r"entries\[0\]\.p95_us"):
            store.import_entries([bad], replace=True)
        assert store.winners() == []
        assert store.import_entries([bad], replace=True, validated=True) == 1


def test_autotune_import_writes_what_read_table_read(tmp_path, capsys):
    table = tmp_path / "t.json"
    entries = [e for e in NEIGHBOURS + background(30, seed=2) if unusable_reason(e) is None]  # import refuses the rest
    write_json(entries, table)
    db = tmp_path / "team.db"
    try:
        main(["import", str(table), "--db", str(db), "--replace"])
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    assert f"imported {len(entries)} of {len(entries)} entries" in capsys.readouterr().err
    with CacheStore.open(db) as store:
        assert sorted(store.winners(), key=lambda e: e.key.id) == sorted(read_table(table), key=lambda e: e.key.id)
