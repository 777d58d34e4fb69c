"""The named grids of problem points a sweep or bench covers; each grid names its dtypes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from flashcore.cache import HALF_DTYPES

from ..core.errors import AutotuneError
from ..core.problem import Point

HALF = HALF_DTYPES


@dataclass(frozen=True)
class Model:
    """The attention shape of a published model config: query heads, key/value heads, head dim."""

    name: str
    heads: int
    kv_heads: int
    head_dim: int


# From the models' published configs (num_attention_heads, num_key_value_heads, head_dim).
MODELS = (
    Model("llama3-8b", 32, 8, 128),
    Model("llama3-70b", 64, 8, 128),
    Model("qwen2.5-7b", 28, 4, 128),
    Model("mistral-7b", 32, 8, 128),
    Model("gpt2", 12, 12, 64),
    Model("gemma2-9b", 16, 8, 256),
)
_DECODE_MODELS = ("llama3-8b", "llama3-70b", "qwen2.5-7b", "gpt2")


def _small() -> list[Point]:
    return [Point(b, 8, s, 64) for s in (128, 256, 512) for b in (8, 16, 32)]


def _heads() -> list[Point]:
    return [Point(16, h, 512, 64) for h in (8, 16, 32, 64, 96, 128)]


def _long() -> list[Point]:
    sb = ((1024, 8), (2048, 8), (4096, 8), (8192, 8), (16384, 4), (32768, 2))
    return [Point(b, 16, s, d, c) for s, b in sb for d in (64, 128) for c in (False, True)]


def _smoke() -> list[Point]:
    # Odd shapes on purpose: S not a multiple of any block, odd H, both masks.
    return [Point(1, 3, 77, 64, False), Point(1, 3, 77, 64, True), Point(2, 1, 50, 32, True)]


def _default() -> list[Point]:
    return list(dict.fromkeys(_small() + _heads() + _long()))


def _models() -> list[Point]:
    """Causal prefill of each model: a server's batches, from many short prompts to one 32K context."""
    sb = ((512, 16), (2048, 4), (8192, 1), (32768, 1))
    return [Point(b, m.heads, s, m.head_dim, True, kv_heads=m.kv_heads) for m in MODELS for s, b in sb]


def _decode() -> list[Point]:
    """One new token (L = 1) over a KV cache, bottom-right causal, at batch sizes and cache lengths of serving."""
    bs = ((1, 4096), (1, 131072), (8, 8192), (32, 4096), (64, 16384), (128, 1024))
    chosen = [m for m in MODELS if m.name in _DECODE_MODELS]
    return [Point(b, m.heads, 1, m.head_dim, True, kv_heads=m.kv_heads, kv_len=s, lower_right=True)
            for m in chosen for b, s in bs]


def _chunked_prefill() -> list[Point]:
    """A chunk of L new tokens over a cache of S (bottom-right causal): long prompts prefilled piece by piece."""
    ls = ((256, 4096), (1024, 8192), (2048, 32768))
    chosen = [m for m in MODELS if m.name in ("llama3-8b", "qwen2.5-7b")]
    return [Point(1, m.heads, lq, m.head_dim, True, kv_heads=m.kv_heads, kv_len=s, lower_right=True)
            for m in chosen for lq, s in ls]


def _smoke_gqa() -> list[Point]:
    """CPU-sized grouped-query and KV-cache points (odd lengths, groups 1, 3 and 4)."""
    return [Point(1, 6, 45, 32, True, kv_heads=2), Point(2, 4, 1, 32, True, kv_heads=1, kv_len=70, lower_right=True),
            Point(1, 3, 5, 32, True, kv_heads=3, kv_len=40, lower_right=True)]


# name -> (points, dtypes the grid is tuned in)
GRIDS: dict[str, tuple[Callable[[], list[Point]], tuple[str, ...]]] = {
    "smoke": (_smoke, ("float16",)),
    "smoke-gqa": (_smoke_gqa, ("float16",)),
    "small": (_small, HALF),
    "heads": (_heads, HALF),
    "long": (_long, HALF),
    "default": (_default, HALF),
    "models": (_models, HALF),
    "decode": (_decode, HALF),
    "chunked-prefill": (_chunked_prefill, HALF),
}


def get_grid(name: str, dtype: str | None = None) -> list[Point]:
    """The points of grid ``name``: in each of its dtypes, or only in ``dtype`` when given (any dtype label,
    e.g. "fp8"); AutotuneError naming the grids otherwise."""
    if name not in GRIDS:
        raise AutotuneError(f"unknown grid {name!r}; choose one of {', '.join(GRIDS)}")
    make, dtypes = GRIDS[name]
    return [replace(p, dtype=dt) for dt in ((dtype,) if dtype else dtypes) for p in make()]
