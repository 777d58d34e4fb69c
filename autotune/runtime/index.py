"""The cache files get_kernel serves from, read once per process into in-memory indexes.

``cache_index(path)`` is the user's cache (its winners), ``shipped_index()`` the tables installed under
``cache/tables/``. Only entries this process may serve are indexed (``servable``: for our kernels the Triton
version and the JIT source's hash, for a backend the torch and library builds).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from flashcore.cache import CacheError, CacheStore, Entry
from flashcore.kernels import families

from ..core.problem import Point
from ..core.toolchain import servable


@dataclass
class Index:
    exact: dict[tuple, list[Entry]] = field(default_factory=dict)  # point -> every candidate's entry there
    groups: dict[tuple, list[Entry]] = field(default_factory=dict)  # group_key -> entries


HALF = ("float16", "bfloat16")
_INDEXES: dict[str, Index] = {}


def exact_key(gpu: str, p: Point) -> tuple:
    return (gpu, p.dtype, p.causal, p.lower_right, p.head_dim, p.seq_len, p.kv_len, p.batch, p.heads, p.kv_heads)


def group_key(gpu: str, p: Point) -> tuple:
    """What a "nearest" entry must share with the point: GPU, dtype, mask, head dim, and the regime (q and k of
    one length, or a KV cache): a decode step never borrows a prefill point's choice, nor the reverse. The two
    16-bit dtypes share a group (the same instructions at the same rates; the lookup prefers the point's own)."""
    return (gpu, p.dtype if p.dtype not in HALF else "half", p.mask, p.head_dim, p.seq_len == p.kv_len)


def clear() -> None:
    """Forget every index read so far (the next lookup reads the files again)."""
    _INDEXES.clear()


def cache_index(path: str) -> Index:
    index = _INDEXES.get(path)
    if index is not None:
        return index
    index = _INDEXES[path] = Index()
    if not Path(path).exists():
        return index
    try:
        with CacheStore.open(path) as store:
            entries = store.winners()
    except CacheError as exc:
        warnings.warn(f"FlashCore: ignoring the tuning cache: {exc}", RuntimeWarning, stacklevel=4)
        return index
    return fill(index, entries)


def shipped_index() -> Index:
    """The tables installed with the package (cache/tables/*.json) that this process may serve."""
    index = _INDEXES.get("<shipped>")
    if index is not None:
        return index
    from flashcore.cache import parse_table

    entries = []
    for name, text in shipped_tables():
        try:
            entries += parse_table(json.loads(text))
        except (CacheError, ValueError) as exc:
            warnings.warn(f"FlashCore: ignoring shipped table {name}: {exc}", RuntimeWarning, stacklevel=4)
    index = _INDEXES["<shipped>"] = fill(Index(), entries)
    return index


def shipped_tables() -> list[tuple[str, str]]:
    """(file name, JSON text) of every table under the installed ``cache/tables/``."""
    from importlib import resources

    folder = resources.files("flashcore.cache").joinpath("tables")
    return [(item.name, item.read_text(encoding="utf-8"))
            for item in sorted(folder.iterdir(), key=lambda p: p.name) if item.name.endswith(".json")]


def fill(index: Index, entries) -> Index:
    known = {f.name: f for f in families()}
    for e in entries:
        k = e.key
        family = known.get(k.kernel)
        if family is None or not servable(k, family):
            continue
        point = Point(k.batch, k.heads, k.seq_len, k.head_dim, k.causal, k.dtype, k.kv_heads, k.kv_len, k.lower_right)
        index.exact.setdefault(exact_key(k.gpu, point), []).append(e)
        index.groups.setdefault(group_key(k.gpu, point), []).append(e)
    return index
