"""Run time: ``get_kernel(shape)`` serves the fastest correct candidate from the cache and never tunes.

A candidate is a config of one of our kernel families or a backend (PyTorch's SDPA backends, FlashAttention-4):
whatever a sweep found fastest and correct at the point. Lookup order:
1. "exact": the point in the user's cache, else in the tables shipped under ``cache/tables/`` ("shipped"): the
   fastest candidate measured there, but the best backend where our kernel is not ahead of it by OWN_MARGIN;
2. "nearest": the closest tuned point of the same GPU, mask, head dim and regime (equal lengths, or a KV cache;
   the point's own dtype first, then the other 16-bit one), within OWN_REACH: a backend's choice, or our own
   config where it beat the backends there (``_nearest``: OWN_REACH, OWN_MARGIN);
3. "default": on a GPU, SDPA as the user would call it (the "sdpa" candidate: SDPA picks its backend), so that
   a shape no table covers is never slower than without FlashCore. ``kernel="own"`` (or a family's name), and
   Triton's CPU interpreter (where speed means nothing and our kernels are what is being tried), instead serve
   the safe default config of our kernel (split-KV filled to the GPU for decode).
Eager callers (the drop-in op outside torch.compile) of a decode-class call served by our kernel get the best
backend measured at the same point instead where it is slower by less than EAGER_HOST_US: our split-KV launch
costs the host more than SDPA's (``runner_for``). "nearest" and "default" lookups are recorded as misses next
to the cache file (``autotune misses``). Only entries this process may serve are considered (``servable``: for
our kernels the Triton version and the JIT source's hash, for a backend the torch and library builds;
``index.usable``: a config its family can run). The cache file is read once per process; after the first call
for a shape, get_kernel is a dictionary lookup.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import torch

from flashcore.cache import Entry
from flashcore.kernels import default_families, families, get_family
from flashcore.kernels._common import interpreting

from ..core.problem import Point, distance, dtype_name
from ..core.profiles import CPU_GPU_NAME, PROFILES, cuda_device, serving_profile
from . import index as _index
from .index import Index, exact_key, group_key
from .misses import record_miss
from .paths import resolve_db

OWN = "own"  # get_kernel(kernel="own"): our kernels only, no backend
SDPA = "sdpa"  # SDPA's own choice (kernels/backends.py): what a miss serves when any candidate may serve it
# What a "nearest" lookup borrows from another tuned point must be within this distance of it (core.problem.
# distance: log2 steps of the lengths and of batch x heads; 2.0 is a factor 4 in all, e.g. twice the kv length and
# twice the batch), and an own config must have beaten the best backend there by this factor: its tiles per SM
# and loop lengths change by at most that much, and a 3% lead is the timing noise of a sweep twice over. Which
# SDPA backend is faster changes with the shape too: farther away, SDPA's own choice serves.
OWN_REACH = 2.0
OWN_MARGIN = 0.97
# Eager decode (a few queries over a longer KV cache, called outside torch.compile): our split-KV kernel costs the
# host about this much more per call than SDPA (two launches and a workspace against one library call:
# benchmarks/overhead.py, "kv-decode" against "backend-decode", on the H200's host: 28.0 against 22.9 µs through
# attention() at 6c4b145; it was ~20 µs before the launch and the hot path were cut). Where a backend measured at
# the same point is slower by less than that, eager callers (runner_for, the drop-in op's eager path) get the
# backend: a step that waits on the host would lose more than the device time saves. Inside CUDA graphs and
# torch.compile (the op's compiled path) device time alone decides. ``$FLASHCORE_EAGER_HOST_US`` overrides it.
EAGER_HOST_US = 6.0
EAGER_MAX_QUERIES = 16


class TunedKernel:
    """A candidate bound to one config. Call it as ``kernel(q, k, v, sm_scale=None) -> out``.

    ``.kernel`` names the candidate (a kernel family, a backend such as "sdpa_cudnn", or "sdpa": SDPA's own
    choice, served where nothing tuned applies), ``.config`` is its config dict, ``.source`` says where it came
    from ("exact", "shipped", "nearest", "default"), ``.entry`` is the cache entry it came from (None for
    "default"). Tensors on the CPU outside Triton's interpreter are computed by SDPA (our kernels need a GPU).
    """

    __slots__ = ("config", "source", "entry", "causal", "kernel", "lower_right", "backend_entry", "_launch", "_run")

    def __init__(self, config: dict[str, Any], source: str, entry: Entry | None, causal: bool, kernel: str,
                 lower_right: bool = False, backend_entry: Entry | None = None):
        self.config = config
        self.source = source
        self.entry = entry
        self.causal = causal
        self.kernel = kernel
        self.lower_right = lower_right
        self.backend_entry = backend_entry  # the best backend measured where ``entry`` was (for eager decode)
        self._launch = self._run = None

    @property
    def backend(self) -> bool:
        """Whether this is a backend (PyTorch SDPA, FlashAttention-4) rather than one of our kernels."""
        return get_family(self.kernel).kind == "backend"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None):
        if not q.is_cuda and not interpreting():
            return self._on_cpu(q, k, v, sm_scale)
        launch = self._launch
        if launch is None:
            launch = self._launch = get_family(self.kernel).serving_fn(self.config, self.causal, self.lower_right)
        return launch(q, k, v, sm_scale)

    def runner(self):
        """``(q, k, v, sm_scale) -> out`` without the input checks of ``__call__`` (where the server has a
        checked and an unchecked entry), for callers that checked the call already: the drop-in op."""
        run = self._run
        if run is None:
            if self._launch is None:
                self._launch = get_family(self.kernel).serving_fn(self.config, self.causal, self.lower_right)
            run = self._run = getattr(self._launch, "run", self._launch)
        return run

    def _on_cpu(self, q, k, v, sm_scale):
        from flashcore.kernels.backends import BackendServer

        return BackendServer(None, self.causal, self.lower_right)(q, k, v, sm_scale)

    def __repr__(self) -> str:
        return f"TunedKernel(kernel={self.kernel!r}, source={self.source!r}, config={self.config!r})"


_MEMO: dict[tuple, TunedKernel] = {}


def get_kernel(shape: Sequence[int], dtype: torch.dtype | str = torch.float16, causal: bool = False,
               gpu: str | None = None, db: str | os.PathLike | None = None, kernel: str | None = None, *,
               kv_heads: int | None = None, kv_len: int | None = None, lower_right: bool = False) -> TunedKernel:
    """The tuned candidate for q of ``shape`` = (B, Hq, L, D) and k, v of (B, ``kv_heads``, ``kv_len``, D).

    ``kv_heads`` / ``kv_len`` default to Hq / L (a kv_len other than L is looked up once per power of two: a
    KV cache grows by one token a step, and the kernel takes any length); ``lower_right`` aligns the causal mask
    bottom-right (as
    ``causal_lower_right(L, S)``; SDPA's ``is_causal`` is top-left). ``kernel``: None serves the fastest
    candidate (ours or a backend), "own" our kernels only, a family name only that family. ``gpu``: None reads
    the current device (the CPU interpreter without one), a profile name ("h100") matches any device of that
    profile, anything else is an exact device name. ``db``: the cache file (default: $AUTOTUNE_DB, else the user
    cache directory).
    """
    kv = kv_len or shape[2]
    if kv != shape[2]:  # decode and chunked prefill: the cache grows every step; one lookup per power of two
        kv = -(1 << (kv - 1).bit_length())
    memo_key = (tuple(shape), dtype, causal, gpu, db, kernel, kv_heads or shape[1], kv, lower_right)
    hit = _MEMO.get(memo_key)
    if hit is None:
        if len(shape) != 4 or min(int(x) for x in shape) < 1:
            raise ValueError(f"shape must be (B, H, S, D) of positive ints; got {tuple(shape)}")
        b, h, s, d = (int(x) for x in shape)
        point = Point(b, h, s, d, bool(causal), dtype_name(dtype), int(kv_heads or h), int(kv_len or s),
                      bool(lower_right))
        if point.heads % point.kv_heads:
            raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({point.kv_heads})")
        hit = _MEMO[memo_key] = _lookup(point, gpu, db, kernel)
    return hit


_RUNNERS: dict[tuple, Any] = {}
MAX_RUNNERS = 4096  # distinct call classes remembered (prompt lengths vary): past it the memo starts again
# What the drop-in op's hot path reads (op.attention): call class (``plan_key``) -> the unchecked runner of our
# kernel served there, TO_SDPA where the served candidate is SDPA's own choice (then the call goes to SDPA as the
# user made it, at SDPA's host cost), or a ``backends.Pinned`` where an SDPA backend SDPA would not pick serves
# (SDPA as made, that backend's switch alone on). Filled by runner_for from the class's first call (q's strides
# are not in the class: our runners take any strides, and SDPA's own pick is read on that first call); cleared,
# never rebound, by clear_cache.
PLANS: dict[tuple, Any] = {}
TO_SDPA = SDPA


def plan_key(q: torch.Tensor, k: torch.Tensor, is_causal: bool) -> tuple:
    """The call class of ``PLANS``: q's shape, kv heads, the kv length (by power of two where it differs from q's
    length: a KV cache grows every step), dtype, is_causal. The op's hot path builds the same tuple inline."""
    s, lq = k.shape[2], q.shape[2]
    return (q.shape, k.shape[1], s if s == lq else -(1 << (s - 1).bit_length()), q.dtype, is_causal)


def runner_for(q: torch.Tensor, k: torch.Tensor, causal: bool, lower_right: bool, v: torch.Tensor | None = None):
    """The unchecked runner (``TunedKernel.runner``) of the candidate get_kernel serves for q and k: the drop-in
    op's hot path, for calls it checked already. One dictionary lookup per call (kv lengths other than L by
    power of two, as get_kernel; q's strides too, on which SDPA's own backend choice depends).

    A backend that SDPA would pick itself for this call (``backends.as_sdpa_choice``) is served as SDPA's own choice
    (no backend switch read or set). Also records the call class in ``PLANS`` for the op's hot path."""
    s, lq = k.shape[2], q.shape[2]
    key = (q.shape, q.stride(), k.shape[1], s if s == lq else -(1 << (s - 1).bit_length()), q.dtype, causal,
           lower_right)
    run = _RUNNERS.get(key)
    if run is None:
        from flashcore.kernels.backends import as_sdpa_choice

        if len(_RUNNERS) >= MAX_RUNNERS:
            _RUNNERS.clear()
            PLANS.clear()
        tuned = _eager_choice(get_kernel(q.shape, q.dtype, causal, kv_heads=k.shape[1], kv_len=s,
                                         lower_right=lower_right), lq, s)
        run = _RUNNERS[key] = as_sdpa_choice(tuned.runner(), q, k, k if v is None else v)
        if not lower_right:  # the op's plans cover calls without a mask (is_causal top-left, or none)
            pinned = getattr(run, "pinned", None)
            PLANS[plan_key(q, k, causal)] = (TO_SDPA if getattr(run, "passthrough", False)
                                             else pinned() if pinned is not None else run)
    return run


def _eager_choice(tuned: TunedKernel, lq: int, s: int) -> TunedKernel:
    """What an eager caller gets: ``tuned``, but for a decode-class call (at most EAGER_MAX_QUERIES queries over a
    longer KV cache) served by our kernel, the best backend measured at the same point where that backend is
    slower by less than EAGER_HOST_US of device time."""
    alt, own = tuned.backend_entry, tuned.entry
    if alt is None or own is None or lq > EAGER_MAX_QUERIES or s <= lq or tuned.backend:
        return tuned
    gap = float(os.environ.get("FLASHCORE_EAGER_HOST_US", EAGER_HOST_US))
    if not alt.median_us <= own.median_us + gap:
        return tuned
    return TunedKernel({}, tuned.source, alt, tuned.causal, alt.key.kernel, tuned.lower_right)


def clear_cache() -> None:
    """Forget what was read from cache files (call after a sweep wrote new winners in this process) and the
    fast launch path's recorded launches."""
    _index.clear()
    _MEMO.clear()
    _RUNNERS.clear()
    PLANS.clear()
    import sys

    for family in families():  # a server module's recorded launches, only if it was ever loaded
        server = sys.modules.get(f"flashcore.kernels.{family.server.partition(':')[0]}") if family.server else None
        if server is not None and hasattr(server, "clear_cache"):
            server.clear_cache()


def _allowed(kernel: str | None, point: Point) -> set[str]:
    if kernel is not None and kernel != OWN:
        get_family(kernel)  # KeyError naming the families
        return {kernel}
    fp8 = point.dtype.startswith("fp8")
    return {f.name for f in families() if (kernel is None or f.kind != "backend")
            and (("fp8" in f.dtypes) == fp8)}


def _can_serve(entry: Entry, point: Point, allowed: set[str]) -> bool:
    if entry.key.kernel not in allowed:
        return False
    family = get_family(entry.key.kernel)
    return (family.supports(point.heads, point.kv_heads, point.seq_len, point.kv_len, point.head_dim) is None
            and _index.usable(entry))


def _lookup(point: Point, gpu: str | None, db, kernel: str | None) -> TunedKernel:
    allowed = _allowed(kernel, point)
    path = str(resolve_db(db))
    indexes = (("exact", _index.cache_index(path)), ("shipped", _index.shipped_index()))
    names = _gpu_names(gpu, *(ix for _, ix in indexes))
    for source, index in indexes:
        found = [e for name in names for e in index.exact.get(exact_key(name, point), ())
                 if _can_serve(e, point, allowed)]
        if found:
            entry = _ahead(found) if kernel is None else min(found, key=lambda e: e.median_us)
            return TunedKernel(dict(entry.config), source, entry, point.causal, entry.key.kernel, point.lower_right,
                               _best_backend(found) if kernel is None else None)
    entry = _nearest(point, names, indexes, allowed, bounded=kernel is None)
    if entry is not None:
        alt = None
        if kernel is None:  # the rows at the entry's point: its exact bucket (of the group, in the group's order)
            there = exact_key(entry.key.gpu, entry.key)
            alt = _best_backend([e for _, index in indexes for e in index.exact.get(there, ())
                                 if _can_serve(e, point, allowed)])
        found = TunedKernel(dict(entry.config), "nearest", entry, point.causal, entry.key.kernel, point.lower_right,
                            alt)
    elif SDPA in allowed and names and names[0] != CPU_GPU_NAME:
        found = TunedKernel({}, "default", None, point.causal, SDPA, point.lower_right)
    else:
        found = _default(point, names, allowed)
    record_miss(path, shape=(point.batch, point.heads, point.seq_len, point.head_dim), dtype=point.dtype,
                causal=point.causal, gpu=names[0] if names else str(gpu), kernel=found.kernel, source=found.source,
                kv_heads=point.kv_heads, kv_len=point.kv_len, lower_right=point.lower_right)
    return found


def _nearest(point: Point, names: list[str], indexes, allowed: set[str], bounded: bool) -> Entry | None:
    """The entry to borrow from the closest tuned point of the same group (``index.group_key``): the point's own
    dtype before the other 16-bit one, then ``distance``, then the user's cache before the shipped tables.

    Unbounded (``kernel="own"`` or a family asked for by name): the fastest allowed entry there. Bounded (the
    fastest candidate asked for): nothing beyond ``OWN_REACH`` of the tuned point (None: SDPA's own choice; which
    SDPA backend is faster changes with the shape: cuDNN borrowed from afar ran 1-2% below SDPA's own pick in
    five of six 1x512 prefills of real models at 6c4b145/ea3fae6); within it, a backend's choice, or our own
    config where it is known to stay ahead: at the same query-heads-per-kv-head group, and where it beat the
    best backend measured there by ``OWN_MARGIN`` or more. Otherwise the best backend measured there, else
    None."""
    # The entries of the group in lookup order (dtype mismatch, distance, then the index's rank; a stable sort
    # keeps the indexes' own order among equals), checked with ``_can_serve`` (index.usable: the family's rules)
    # only until the answer is decided: the first servable entry fixes the nearest point, and the servable
    # entries at it are those of the same order that follow it. A large cache's far rows are never judged (nor
    # named in usable's warning); judging every row was half of the first get_kernel on a 20,000-row group.
    ordered = sorted([((e.key.dtype != point.dtype, distance(e.key, point), rank), e)
                      for rank, (_, index) in enumerate(indexes) for name in names
                      for e in index.groups.get(group_key(name, point), ())], key=itemgetter(0))
    first = where = None
    at: list[Entry] = []
    for order, e in ordered:
        if where is None:
            if _can_serve(e, point, allowed):
                first, where = e, order
                at.append(e)
        elif order != where:
            break
        elif _same_point(e, first) and _can_serve(e, point, allowed):
            at.append(e)
    if first is None:
        return None
    if not bounded:
        return min(at, key=lambda e: e.median_us)
    if distance(first.key, point) > OWN_REACH:  # too far to know which backend is faster: SDPA's own choice
        return None
    best = _ahead(at)
    if (get_family(best.key.kernel).kind == "backend"
            or best.key.heads // best.key.kv_heads == point.heads // point.kv_heads):
        return best
    theirs = [e for e in at if get_family(e.key.kernel).kind == "backend"]
    return min(theirs, key=lambda e: e.median_us) if theirs else None


def _ahead(entries: list[Entry]) -> Entry:
    """The fastest of the candidates measured at one point, but a backend where our fastest kernel is not ahead
    of the best backend by OWN_MARGIN: within a sweep's noise the backend is served (it also costs the host no
    more than SDPA)."""
    best = min(entries, key=lambda e: e.median_us)
    theirs = [e for e in entries if get_family(e.key.kernel).kind == "backend"]
    if not theirs or get_family(best.key.kernel).kind == "backend":
        return best
    backend = min(theirs, key=lambda e: e.median_us)
    return best if best.median_us <= OWN_MARGIN * backend.median_us else backend


def _best_backend(entries: list[Entry]) -> Entry | None:
    theirs = [e for e in entries if get_family(e.key.kernel).kind == "backend"]
    return min(theirs, key=lambda e: e.median_us) if theirs else None


def _same_point(a: Entry, b: Entry) -> bool:
    ka, kb = a.key, b.key
    return (ka.gpu, ka.dtype, ka.batch, ka.heads, ka.kv_heads, ka.seq_len, ka.kv_len) == (
        kb.gpu, kb.dtype, kb.batch, kb.heads, kb.kv_heads, kb.seq_len, kb.kv_len)


def _default(point: Point, names: list[str], allowed: set[str]) -> TunedKernel:
    """The safe default config of the first of our kernels that can compute ``point``."""
    from flashcore.kernels import load_space

    profile = serving_profile(names[0]) if names else PROFILES["cpu"]
    fp8 = point.dtype.startswith("fp8")
    order = [n for n in allowed if get_family(n).kind != "backend"] if fp8 or len(allowed) == 1 else [
        n for n in default_families() if n in allowed]  # our "default" families (the registry's), in order
    for name in order:
        family = get_family(name)
        if family.space and family.supports(point.heads, point.kv_heads, point.seq_len, point.kv_len,
                                            point.head_dim) is None:
            space = load_space(family.space, profile.name)
            return TunedKernel(space.default_for(point, profile), "default", None, point.causal, name,
                               point.lower_right)
    raise ValueError(f"no kernel of {sorted(allowed)} can compute {point.label}")


def _gpu_names(gpu: str | None, *indexes: Index) -> list[str]:
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
