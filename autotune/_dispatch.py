"""Run time: ``get_kernel(shape)`` serves a tuned config from the cache and never tunes or benchmarks.

Lookup order: the exact key in the user's cache ("exact"), else in the tables shipped with the package under
``cache/tables/`` ("shipped"), else the closest tuned point of either on the same GPU, kernel, dtype, causal flag
and head dim ("nearest"), else the search space's safe default ("default"). "nearest" and "default" lookups are
recorded as misses next to the cache file (``autotune misses`` lists them). Only entries written by this
toolchain (Triton and torch versions) for this kernel source are considered. The cache file is read once per
process into memory; after the first call for a shape, get_kernel is a dictionary lookup.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cache import CacheError, CacheStore, Entry
from kernels import ensure_backend, get_family

from ._grids import Point
from ._inputs import dtype_name
from ._misses import record_miss
from ._paths import resolve_db
from ._profiles import CPU_GPU_NAME, PROFILES, cuda_device
from ._toolchain import versions


class TunedKernel:
    """A launcher bound to one config. Call it as ``kernel(q, k, v, sm_scale=None) -> out``.

    ``.config`` is the config dict, ``.source`` says where it came from ("exact", "shipped", "nearest",
    "default"),
    ``.entry`` is the cache entry it came from (None for "default").
    """

    __slots__ = ("config", "source", "entry", "causal", "kernel", "_launch")

    def __init__(self, config: dict[str, Any], source: str, entry: Entry | None, causal: bool, kernel: str):
        self.config = config
        self.source = source
        self.entry = entry
        self.causal = causal
        self.kernel = kernel
        self._launch = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None):
        launch = self._launch
        if launch is None:
            launch = self._launch = self._launcher()
        return launch(q, k, v, sm_scale)

    def _launcher(self):
        """``(q, k, v, sm_scale) -> out``: what the family serves (``KernelFamily.serving_fn``: for attention_fwd
        the fast launcher, for attention_fp8 the Triton quantizer before the same FP8 kernel), bound to the
        config."""
        return get_family(self.kernel).serving_fn(self.config, self.causal)

    def __repr__(self) -> str:
        return f"TunedKernel(source={self.source!r}, config={self.config!r})"


@dataclass
class _Index:
    exact: dict[tuple, Entry] = field(default_factory=dict)
    groups: dict[tuple, list[Entry]] = field(default_factory=dict)


_INDEXES: dict[tuple[str, str], _Index] = {}
_MEMO: dict[tuple, TunedKernel] = {}


def get_kernel(shape: Sequence[int], dtype: torch.dtype = torch.float16, causal: bool = False,
               gpu: str | None = None, db: str | os.PathLike | None = None,
               kernel: str = "attention_fwd") -> TunedKernel:
    """The tuned kernel for q/k/v of ``shape`` = (B, H, S, D).

    ``gpu``: None reads the current device (the CPU interpreter without one), a profile name ("h100") matches
    any device of that profile, anything else is an exact device name. ``db``: the cache file (default:
    $AUTOTUNE_DB, else the user cache directory).
    """
    memo_key = (tuple(shape), dtype, causal, gpu, db, kernel)
    hit = _MEMO.get(memo_key)
    if hit is None:
        hit = _MEMO[memo_key] = _lookup(tuple(int(x) for x in shape), dtype, bool(causal), gpu, db, kernel)
    return hit


def clear_cache() -> None:
    """Forget what was read from cache files (call after a sweep wrote new winners in this process)."""
    _INDEXES.clear()
    _MEMO.clear()


def _lookup(shape, dtype, causal, gpu, db, kernel) -> TunedKernel:
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must be (B, H, S, D) of positive ints; got {shape}")
    b, h, s, d = shape
    family = get_family(kernel)
    point = Point(b, h, s, d, causal, dtype_name(dtype))
    path = str(resolve_db(db))
    indexes = (("exact", _index(path, kernel, family.source_hash)), ("shipped", _shipped(kernel, family.source_hash)))
    names = _gpu_names(gpu, *(ix for _, ix in indexes))
    for source, index in indexes:
        for name in names:
            entry = index.exact.get((name, point.dtype, causal, d, s, b, h))
            if entry is not None:
                return TunedKernel(dict(entry.config), source, entry, causal, kernel)
    near = [(rank, e) for rank, (_, index) in enumerate(indexes) for name in names
            for e in index.groups.get((name, point.dtype, causal, d), ())]
    if near:
        _, entry = min(near, key=lambda r: (_distance(r[1], s, b, h), r[0], r[1].key.seq_len, r[1].key.batch))
        found = TunedKernel(dict(entry.config), "nearest", entry, causal, kernel)
    else:
        from search_spaces import load_space

        interpreter = CPU_GPU_NAME in names
        ensure_backend()
        profile = PROFILES["cpu" if interpreter else "h100"]
        config = load_space(family.space, "cpu" if interpreter else "default").default_for(point, profile)
        found = TunedKernel(config, "default", None, causal, kernel)
    record_miss(path, shape=shape, dtype=point.dtype, causal=causal, gpu=names[0] if names else str(gpu),
                kernel=kernel, source=found.source)
    return found


def _distance(e: Entry, s: int, b: int, h: int) -> float:
    k = e.key
    return 2 * abs(math.log2(k.seq_len / s)) + abs(math.log2(k.batch * k.heads / (b * h))) + 0.1 * abs(math.log2(k.heads / h))


def _gpu_names(gpu: str | None, *indexes: _Index) -> list[str]:
    if gpu is None:
        device = cuda_device()
        return [device[0] if device else CPU_GPU_NAME]
    if gpu in PROFILES:
        profile = PROFILES[gpu]
        if profile.interpreter:
            return [CPU_GPU_NAME]
        known = sorted({key[0] for index in indexes for key in index.exact})
        return [n for n in known if any(m in n for m in profile.match)]
    return [gpu]


def _index(path: str, kernel: str, kernel_hash: str) -> _Index:
    index = _INDEXES.get((path, kernel))
    if index is not None:
        return index
    index = _INDEXES[(path, kernel)] = _Index()
    if not Path(path).exists():
        return index
    triton_version, torch_version = versions()
    try:
        with CacheStore.open(path) as store:
            entries = store.winners(kernel=kernel, kernel_hash=kernel_hash, triton_version=triton_version,
                                    torch_version=torch_version)
    except CacheError as exc:
        warnings.warn(f"FlashCore: ignoring the tuning cache: {exc}", RuntimeWarning, stacklevel=4)
        return index
    return _fill(index, entries)


def _shipped(kernel: str, kernel_hash: str) -> _Index:
    """The tables installed with the package (cache/tables/*.json), for this kernel and toolchain."""
    index = _INDEXES.get(("<shipped>", kernel))
    if index is not None:
        return index
    from cache import parse_table

    triton_version, torch_version = versions()
    entries = []
    for name, text in shipped_tables():
        try:
            table = parse_table(json.loads(text))
        except (CacheError, ValueError) as exc:
            warnings.warn(f"FlashCore: ignoring shipped table {name}: {exc}", RuntimeWarning, stacklevel=4)
            continue
        entries += [e for e in table if e.key.kernel == kernel and e.key.kernel_hash == kernel_hash
                    and e.key.triton_version == triton_version and e.key.torch_version == torch_version]
    index = _INDEXES[("<shipped>", kernel)] = _fill(_Index(), entries)
    return index


def shipped_tables() -> list[tuple[str, str]]:
    """(file name, JSON text) of every table under the installed ``cache/tables/``."""
    from importlib import resources

    folder = resources.files("cache").joinpath("tables")
    return [(item.name, item.read_text(encoding="utf-8"))
            for item in sorted(folder.iterdir(), key=lambda p: p.name) if item.name.endswith(".json")]


def _fill(index: _Index, entries) -> _Index:
    for e in entries:
        k = e.key
        index.exact[(k.gpu, k.dtype, k.causal, k.head_dim, k.seq_len, k.batch, k.heads)] = e
        index.groups.setdefault((k.gpu, k.dtype, k.causal, k.head_dim), []).append(e)
    return index
