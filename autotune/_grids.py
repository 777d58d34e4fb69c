"""Problem points and the named grids of them that a sweep covers."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ._errors import AutotuneError


@dataclass(frozen=True, order=True)
class Point:
    """One problem shape: q, k, v are (batch, heads, seq_len, head_dim) of ``dtype``."""

    batch: int
    heads: int
    seq_len: int
    head_dim: int
    causal: bool = False
    dtype: str = "float16"

    @property
    def label(self) -> str:
        """A readable id such as ``B2-H3-S77-D64-causal-float16``."""
        return f"B{self.batch}-H{self.heads}-S{self.seq_len}-D{self.head_dim}-{'causal' if self.causal else 'full'}-{self.dtype}"

    @property
    def flops(self) -> float:
        """4·B·H·S²·D, halved when causal."""
        f = 4.0 * self.batch * self.heads * self.seq_len ** 2 * self.head_dim
        return f / 2 if self.causal else f

    def as_dict(self) -> dict:
        return asdict(self)


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


def format_config(config: dict) -> str:
    """A compact form of an attention config: ``M64 N32 w4 s2 split``."""
    short = {"BLOCK_M": "M", "BLOCK_N": "N", "num_warps": "w", "num_stages": "s"}
    parts = [f"{short[k]}{config[k]}" for k in short if k in config]
    parts += [k.lower().replace("causal_", "") for k, v in sorted(config.items()) if v is True]
    parts += [f"{k}={v}" for k, v in sorted(config.items()) if k not in short and not isinstance(v, bool)]
    return " ".join(parts)


def _default() -> list[Point]:
    seen, out = set(), []
    for p in _small() + _heads() + _long():
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


GRIDS = {"smoke": _smoke, "small": _small, "heads": _heads, "long": _long, "default": _default}


def get_grid(name: str, dtype: str = "float16") -> list[Point]:
    """The points of grid ``name`` in ``dtype``; AutotuneError naming the grids otherwise."""
    if name not in GRIDS:
        raise AutotuneError(f"unknown grid {name!r}; choose one of {', '.join(GRIDS)}")
    return [Point(p.batch, p.heads, p.seq_len, p.head_dim, p.causal, dtype) for p in GRIDS[name]()]
