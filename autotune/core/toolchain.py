"""Toolchain versions and cache keys: what makes a tuned config valid to serve again."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timezone
from functools import cache
from importlib import metadata
from pathlib import Path

from flashcore.cache import CacheKey

from .problem import Point


@cache
def versions() -> tuple[str, str]:
    """(triton version, torch version) of this process, read without importing Triton."""
    import torch

    try:
        triton_version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        import triton

        triton_version = triton.__version__
    return triton_version, torch.__version__


def make_key(point: Point, family, gpu: str, compute_capability: str) -> CacheKey:
    """The cache key of ``point`` for ``family`` on device ``gpu`` with this process's toolchain."""
    return CacheKey(
        gpu=gpu, compute_capability=compute_capability, triton_version=versions()[0], kernel=family.name,
        kernel_hash=family.kernel_hash(gqa=point.kv_heads != point.heads), dtype=point.dtype, causal=point.causal,
        head_dim=point.head_dim, seq_len=point.seq_len, batch=point.batch, heads=point.heads,
        kv_heads=point.kv_heads, kv_len=point.kv_len, lower_right=point.lower_right)


def point_of(key: CacheKey) -> Point:
    """The problem point a cache key names."""
    return Point(key.batch, key.heads, key.seq_len, key.head_dim, key.causal, key.dtype, key.kv_heads, key.kv_len,
                 key.lower_right)


def servable(key: CacheKey, family) -> bool:
    """Whether an entry under ``key`` may be served by this process (its GPU aside): our kernels' entries when
    Triton's version and the JIT source's hash match (the torch build is recorded, not required); a backend's
    when the builds it ran on match (its fingerprint)."""
    gqa = key.kv_heads != key.heads
    if family.kind == "backend":
        return key.kernel_hash == family.kernel_hash(gqa)
    return key.triton_version == versions()[0] and family.hash_matches(key.kernel_hash, gqa)


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def git_commit() -> str:
    """The commit the code runs from: FLASHCORE_COMMIT if set (copies without .git), else git, else "unknown"."""
    if os.environ.get("FLASHCORE_COMMIT"):
        return os.environ["FLASHCORE_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(gpu: str, compute_capability: str) -> dict[str, str]:
    """Where a figure comes from: GPU, toolchain, commit and date."""
    triton_version, torch_version = versions()
    import torch

    return {"gpu": gpu, "compute_capability": compute_capability, "torch": torch_version,
            "triton": triton_version, "cuda": str(torch.version.cuda), "commit": git_commit(), "date": now_iso()}
