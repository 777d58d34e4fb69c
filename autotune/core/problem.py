"""Problem points: the shape of one attention call, its dtype names, and how far apart two points are."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from flashcore.cache import HALF_DTYPES, normalize_problem

_TORCH_DTYPES = HALF_DTYPES


@dataclass(frozen=True, order=True)
class Point:
    """One problem shape: q is (batch, heads, seq_len, head_dim), k and v (batch, kv_heads, kv_len, head_dim), in
    ``dtype``. ``kv_heads`` and ``kv_len`` default to ``heads`` and ``seq_len`` (0 = the same); ``causal`` is
    SDPA's top-left aligned mask, ``lower_right`` aligns it bottom-right (as
    ``torch.nn.attention.bias.causal_lower_right``; normalised to False where the lengths are equal).
    """

    batch: int
    heads: int
    seq_len: int
    head_dim: int
    causal: bool = False
    dtype: str = "float16"
    kv_heads: int = 0
    kv_len: int = 0
    lower_right: bool = False

    def __post_init__(self) -> None:
        normalize_problem(self)

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 without grouped-query heads)."""
        return self.heads // self.kv_heads

    @property
    def mask(self) -> str:
        """"full", "causal" (top-left) or "causal_lr" (bottom-right, with unequal lengths)."""
        return "causal_lr" if self.lower_right else "causal" if self.causal else "full"

    @property
    def label(self) -> str:
        """A readable id such as ``B2-H3-S77-D64-causal-float16``, ``B4-H32kv8-S1-KV4096-D128-causal_lr-bfloat16``."""
        heads = f"H{self.heads}" + (f"kv{self.kv_heads}" if self.kv_heads != self.heads else "")
        lengths = f"S{self.seq_len}" + (f"-KV{self.kv_len}" if self.kv_len != self.seq_len else "")
        return f"B{self.batch}-{heads}-{lengths}-D{self.head_dim}-{self.mask}-{self.dtype}"

    @property
    def visible_pairs(self) -> float:
        """(query, key) pairs the mask lets through, per batch and head: L·S without a mask, S²/2 for causal
        attention of equal lengths (the convention of the FLOP counts everyone quotes), exact otherwise."""
        lq, lk = self.seq_len, self.kv_len
        if not self.causal:
            return float(lq * lk)
        if lq == lk:
            return lq * lq / 2
        a = (lk - lq if self.lower_right else 0) + 1  # row i sees min(S, max(0, i + a)) keys
        full = min(lq, max(0, lq - (lk - a)))  # rows i >= S - a see every key
        i0, i1 = max(0, 1 - a), min(lq - 1, lk - a - 1)
        n = max(0, i1 - i0 + 1)
        return float(full * lk + n * (i0 + a) + n * (n - 1) / 2)

    @property
    def flops(self) -> float:
        """4·B·H·(visible pairs)·D: 4·B·H·S²·D, halved when causal, for equal lengths."""
        return 4.0 * self.batch * self.heads * self.visible_pairs * self.head_dim

    @property
    def kv_bytes(self) -> int:
        """Bytes of K and V in 16 bits: what a memory-bound (decode) call must read at least."""
        return 2 * self.batch * self.kv_heads * self.kv_len * self.head_dim * 2

    def as_dict(self) -> dict:
        return asdict(self)


def torch_dtype(name: str):
    """The torch dtype of the inputs and output of a point of cache dtype ``name``: "float16", "bfloat16", and
    float16 for the FP8 labels ("fp8", "fp8-tol0.03": the FP8 kernel takes and returns 16-bit tensors)."""
    import torch

    if name in _TORCH_DTYPES:
        return getattr(torch, name)
    if _fp8_tol(name) is not None:
        return torch.float16
    raise ValueError(f"unsupported dtype {name!r}; choose one of {', '.join(_TORCH_DTYPES)} or fp8")


def dtype_name(dtype) -> str:
    """The cache dtype name of a torch dtype; a cache dtype label ("float16", "fp8", "fp8-tol0.03") is returned
    as it is once checked, so that ``get_kernel(shape, dtype="fp8-tol0.03", kernel="attention_fp8")`` serves
    the FP8 winner of that error budget."""
    if isinstance(dtype, str):
        if dtype in _TORCH_DTYPES or _fp8_tol(dtype) is not None:
            return dtype
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {', '.join(_TORCH_DTYPES)}, fp8 or "
                         "fp8-tol<budget>")
    name = str(dtype).removeprefix("torch.")
    if name in _TORCH_DTYPES:
        return name
    raise ValueError(f"unsupported dtype {dtype}; choose float16 or bfloat16")


def _fp8_tol(name: str) -> float | None:
    from flashcore.cache import fp8_tol

    return fp8_tol(name)


def distance(a, b) -> float:
    """How far apart two problems are (Points or cache keys): query and key/value lengths on a log scale weigh
    most (they decide the tiles), then the work (batch x heads), then the head split and the head grouping."""
    return (abs(math.log2(a.seq_len / b.seq_len)) + abs(math.log2(a.kv_len / b.kv_len))
            + abs(math.log2(a.batch * a.heads / (b.batch * b.heads))) + 0.1 * abs(math.log2(a.heads / b.heads))
            + 0.5 * abs(math.log2((a.heads // a.kv_heads) / (b.heads // b.kv_heads))))


def format_config(config: dict) -> str:
    """A compact form of an attention config: ``M64 N32 w4 s2 split``."""
    short = {"BLOCK_M": "M", "BLOCK_N": "N", "num_warps": "w", "num_stages": "s"}
    parts = [f"{short[k]}{config[k]}" for k in short if k in config]
    parts += [k.lower().replace("causal_", "") for k, v in sorted(config.items()) if v is True]
    parts += [f"{k}={v}" for k, v in sorted(config.items()) if k not in short and not isinstance(v, bool)]
    return " ".join(parts) or "-"
