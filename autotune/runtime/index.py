"""The cache files get_kernel serves from, read once per process into in-memory indexes.

``cache_index(path)`` is the user's cache (its winners), ``shipped_index()`` the tables installed under
``cache/tables/``. Only entries this process may serve are indexed (``servable``: for our kernels the Triton
version and the JIT source's hash, for a backend the torch and library builds), and ``usable(entry)`` says
whether an entry's config is one its family can run.

Guarantees: reading never raises into model code and never writes. The user's cache is opened read-only
(``CacheStore.open(path, readonly=True)``: a read-only file or folder is served, and a file that is not a
FlashCore cache, a 0-byte one included, is never written to); a file that cannot be read at all is ignored with
one RuntimeWarning; a row or table entry that is malformed (columns of the wrong type, a config that is not a
JSON object or nests too deep, a key that describes no problem) is skipped with one RuntimeWarning naming it,
and the rest is served.
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flashcore.cache import HALF_DTYPES, CacheError, CacheStore, Entry, base_dtype
from flashcore.kernels import families, get_family

from ..core.errors import AutotuneError
from ..core.problem import Point
from ..core.toolchain import servable


@dataclass
class Index:
    exact: dict[tuple, list[Entry]] = field(default_factory=dict)  # point -> every candidate's entry there
    groups: dict[tuple, list[Entry]] = field(default_factory=dict)  # group_key -> entries


HALF = HALF_DTYPES
_INDEXES: dict[str, Index] = {}
_USABLE: dict[int, tuple[Entry, bool]] = {}  # id(entry) -> (the entry, kept alive so its id is not reused; verdict)


def exact_key(gpu: str, p: Point) -> tuple:
    """Where the entries measured at ``p`` (a Point, or a CacheKey: normalised alike) are found."""
    return (gpu, p.dtype, p.causal, p.lower_right, p.head_dim, p.seq_len, p.kv_len, p.batch, p.heads, p.kv_heads)


def group_key(gpu: str, p: Point) -> tuple:
    """What a "nearest" entry must share with the point: GPU, dtype, mask, head dim, and the regime (q and k of
    one length, or a KV cache): a decode step never borrows a prefill point's choice, nor the reverse. The two
    16-bit dtypes share a group (the same instructions at the same rates; the lookup prefers the point's own).

    ``p`` is a Point or a CacheKey (both normalised alike, ``normalize_problem``); the mask is ``Point.mask``."""
    mask = "causal_lr" if p.lower_right else "causal" if p.causal else "full"
    return (gpu, p.dtype if p.dtype not in HALF else "half", mask, p.head_dim, p.seq_len == p.kv_len)


def clear() -> None:
    """Forget every index read so far and every ``usable`` verdict (the next lookup reads the files again)."""
    _INDEXES.clear()
    _USABLE.clear()


def cache_index(path: str) -> Index:
    """The servable winners of the cache file at ``path``, read once per process (``read_index``)."""
    index = _INDEXES.get(path)
    if index is None:
        index = _INDEXES[path] = read_index(path)
    return index


def read_index(path: str | Path) -> Index:
    """The servable winners of the cache file at ``path``, read now (not memoised) and read-only.

    A missing file is an empty index; a file that cannot be read as a FlashCore cache (not SQLite, corrupted,
    foreign, newer, unreadable) is an empty index and one RuntimeWarning; bad rows are skipped with one
    RuntimeWarning each. Never raises for the file's content, never writes.
    """
    index = Index()
    try:
        if not Path(path).exists():
            return index
        with CacheStore.open(path, readonly=True) as store:
            entries = store.winners()
    except (CacheError, OSError, sqlite3.Error) as exc:
        warnings.warn(f"FlashCore: ignoring the tuning cache: {exc}", RuntimeWarning, stacklevel=3)
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
        except (CacheError, ValueError, TypeError, RecursionError) as exc:  # RecursionError: a JSON depth bomb
            warnings.warn(f"FlashCore: ignoring shipped table {name}: {exc}", RuntimeWarning, stacklevel=4)
    index = _INDEXES["<shipped>"] = fill(Index(), entries)
    return index


def shipped_tables() -> list[tuple[str, str]]:
    """(file name, JSON text) of every table under the installed ``cache/tables/``; a table that cannot be read
    (or a missing folder) is left out with one RuntimeWarning."""
    from importlib import resources

    out = []
    try:
        items = sorted(resources.files("flashcore.cache").joinpath("tables").iterdir(), key=lambda p: p.name)
    except OSError as exc:
        warnings.warn(f"FlashCore: no shipped tables ({exc})", RuntimeWarning, stacklevel=5)
        return out
    for item in items:
        if item.name.endswith(".json"):
            try:
                out.append((item.name, item.read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:  # ValueError: not UTF-8
                warnings.warn(f"FlashCore: ignoring shipped table {item.name}: {exc}", RuntimeWarning, stacklevel=5)
    return out


def fill(index: Index, entries) -> Index:
    """Add the entries this process may serve to ``index``; an entry whose key describes no problem (a size
    that is not a positive int, query heads not a multiple of the key/value heads, an unknown dtype) is skipped
    with one RuntimeWarning naming it.

    A large cache is read here on the first get_kernel of a process, so the work per entry is kept small: the key
    is checked without building a Point (a CacheKey is normalised as a Point is, so its fields are the point's),
    and ``servable`` is judged once per kernel, toolchain and head grouping."""
    known = {f.name: f for f in families()}
    may_serve: dict[tuple, bool] = {}
    dtypes: dict[str, bool] = {}
    for e in entries:
        k = e.key
        if not _describes_a_problem(e, dtypes):
            continue
        family = known.get(k.kernel)
        if family is None:
            continue
        toolchain = (k.kernel, k.triton_version, k.kernel_hash, k.kv_heads != k.heads)
        ok = may_serve.get(toolchain)
        if ok is None:
            ok = may_serve[toolchain] = servable(k, family)
        if not ok:
            continue
        index.exact.setdefault(exact_key(k.gpu, k), []).append(e)
        index.groups.setdefault(group_key(k.gpu, k), []).append(e)
    return index


def _key_problem(k: Any, dtypes: dict[str, bool] | None = None) -> None:
    """Raise TypeError / ValueError / AttributeError when the key ``k`` describes no problem; ``dtypes`` memoises
    the dtype check (``base_dtype``) per dtype text."""
    if not (isinstance(k.gpu, str) and isinstance(k.compute_capability, str) and isinstance(k.triton_version, str)
            and isinstance(k.kernel, str) and isinstance(k.kernel_hash, str) and isinstance(k.dtype, str)):
        raise TypeError("a text field of the key is not text")
    sizes = (k.batch, k.heads, k.seq_len, k.head_dim, k.kv_heads, k.kv_len)
    if not (type(sizes[0]) is int and type(sizes[1]) is int and type(sizes[2]) is int and type(sizes[3]) is int
            and type(sizes[4]) is int and type(sizes[5]) is int and min(sizes) >= 1):
        raise ValueError(f"sizes must be positive ints; got {sizes}")
    if type(k.causal) is not bool or type(k.lower_right) is not bool:
        raise TypeError("causal and lower_right must be booleans")
    if k.heads % k.kv_heads:
        raise ValueError(f"{k.heads} query heads are not a multiple of {k.kv_heads} key/value heads")
    if dtypes is None or k.dtype not in dtypes:
        base_dtype(k.dtype)  # ValueError for an unknown dtype
        if dtypes is not None:
            dtypes[k.dtype] = True


def _describes_a_problem(entry: Entry, dtypes: dict[str, bool] | None = None, warn: bool = True) -> bool:
    """Whether ``entry``'s key describes a problem; when not, one RuntimeWarning (unless ``warn`` is False)."""
    k = entry.key
    try:
        _key_problem(k, dtypes)
    except (TypeError, ValueError, AttributeError) as exc:
        if warn:
            warnings.warn(f"FlashCore: skipping the cached {_short(getattr(k, 'kernel', '?'))} entry of key "
                          f"{_key_id(entry)}: {exc}", RuntimeWarning, stacklevel=3)  # fill's caller
        return False
    return True


def _point(entry: Entry, warn: bool = True) -> Point | None:
    """The problem ``entry`` was tuned at, or None (with one warning, unless ``warn`` is False) when its key
    describes none."""
    if not _describes_a_problem(entry, warn=warn):
        return None
    k = entry.key
    return Point(k.batch, k.heads, k.seq_len, k.head_dim, k.causal, k.dtype, k.kv_heads, k.kv_len, k.lower_right)


def usable(entry: Entry) -> bool:
    """Whether ``entry``'s config is one its family can run at the entry's own point; memoised per entry (a
    dictionary lookup after the first call), cleared by ``clear()``.

    False, with one RuntimeWarning naming the entry and why, when: the family is unknown; a backend's config is
    not ``{}``; our family's config is not an object of named scalars, lacks or adds a key of its search space
    (``search_spaces/<space>.toml`` params), has a value of another type than the space's (a float or a bool
    where an int belongs), is refused by the family's ``checker`` (the launcher's ``check_config``), or breaks
    one of the space's named rules at the entry's point on ``serving_profile(entry.key.gpu)`` (the "cpu" space
    of the interpreter). Never raises for the entry's content; never sets TRITON_INTERPRET.
    """
    hit = _USABLE.get(id(entry))
    if hit is not None and hit[0] is entry:
        return hit[1]
    why = unusable_reason(entry)
    if why is not None:
        point = _point(entry, warn=False)
        where = point.label if point is not None else "?"
        warnings.warn(f"FlashCore: not serving the cached {_short(entry.key.kernel)} config at {where} on "
                      f"{_short(entry.key.gpu)} (key {_key_id(entry)}): {why}", RuntimeWarning, stacklevel=2)
    _USABLE[id(entry)] = (entry, why is None)
    return why is None


def unusable_reason(entry: Entry) -> str | None:
    """Why ``entry``'s config is not one its family can run at the entry's point (see :func:`usable`), or None.
    Also what ``autotune import`` checks before writing anything."""
    from flashcore.kernels._family import resolve
    from flashcore.kernels import load_space
    from flashcore.search_spaces import SpaceError

    from ..core.profiles import serving_profile

    key, config = entry.key, entry.config
    try:
        family = get_family(key.kernel)
    except (KeyError, TypeError):
        return f"unknown kernel {_short(key.kernel)}"
    if family.kind == "backend":
        return None if type(config) is dict and not config else f"a backend takes no config; got {_short(config)}"
    if type(config) is not dict:
        return f"the config is not an object; got {_short(config)}"
    for name, value in config.items():
        if not isinstance(name, str):
            return f"config key {_short(name)} is not a name"
        if not isinstance(value, (bool, int, float, str)):
            return f"{name} is not a scalar; got {_short(value)}"
    point = _point(entry, warn=False)
    if point is None:
        return "its key describes no problem"
    space = profile = None
    if family.space:
        try:
            profile = serving_profile(key.gpu)
            space = load_space(family.space, profile.name)
        except (AutotuneError, SpaceError) as exc:
            return f"its search space cannot judge it ({exc})"
        expected = dict(space.default)
        missing = sorted(set(expected) - set(config))
        extra = sorted(set(config) - set(expected))
        if missing or extra:
            return ", ".join(([f"missing {missing}"] if missing else []) + ([f"unknown {extra}"] if extra else [])) \
                + f" (the keys of the space.toml of {family.space})"
        for name, value in config.items():
            if not _same_kind(value, expected[name]):
                return f"{name} must be {type(expected[name]).__name__}; got {_short(value)}"
    if family.checker:
        from flashcore.kernels import KernelError

        try:
            resolve(family.checker)(config)
        except (KernelError, ValueError, TypeError, KeyError, AttributeError, ImportError) as exc:
            return f"{family.checker} refuses it: {exc}"
    if space is not None:
        try:
            broken = space.violations(config, point, profile)
        except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
            return f"the rules of {family.space} cannot judge it ({type(exc).__name__}: {exc})"
        if broken:
            return "; ".join(broken)
    return None


def _same_kind(value: Any, expected: Any) -> bool:
    """Whether ``value`` has the type of the space's ``expected`` value (bool and int apart; an int is a float)."""
    if isinstance(expected, bool) or isinstance(value, bool):
        return type(value) is type(expected)
    if isinstance(expected, float):
        return isinstance(value, (int, float))
    return type(value) is type(expected)


def _key_id(entry: Entry) -> str:
    try:
        return entry.key.id
    except (TypeError, ValueError, AttributeError):
        return "?"


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        return "<nested too deep to show>"
    return text if len(text) <= 60 else text[:57] + "..."
