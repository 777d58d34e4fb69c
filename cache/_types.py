"""The cache's contract: the key of a tuned point and the entries stored under it.

Every stage shares these types: the sweep writes them, the dispatcher reads them, export and import
serialise them. They are validated at the boundaries (import, CLI), not everywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

DTYPES = ("float16", "bfloat16", "fp8")
TRIAL_STATUSES = ("ok", "invalid", "compile_error", "resources", "launch_error", "gate_failed", "timeout", "crashed")


@dataclass(frozen=True)
class CacheKey:
    """Names one tuned problem point on one toolchain.

    Two keys are equal only when every field is: a different Triton or torch version, or a kernel whose
    source changed (``kernel_hash``), is a different key, so stale winners are never served by accident.
    """

    gpu: str  # device name as torch reports it, e.g. "NVIDIA H100 80GB HBM3"; "cpu-interpreter" for the CPU
    compute_capability: str  # "9.0"; "cpu" for the interpreter
    triton_version: str
    torch_version: str
    kernel: str  # kernel family name, e.g. "attention_fwd"
    kernel_hash: str  # hash of the kernel family's source
    dtype: str  # one of DTYPES
    causal: bool
    head_dim: int
    seq_len: int
    batch: int
    heads: int

    @property
    def id(self) -> str:
        """A stable text id for the key (sha256 of its canonical JSON), used as the winners' primary key."""
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Entry:
    """The winning config of one key, with the figures it was chosen on."""

    key: CacheKey
    config: dict[str, Any]
    median_us: float
    p95_us: float
    p99_us: float
    tflops: float
    rel_err: float
    created_at: str  # ISO-8601 UTC


@dataclass(frozen=True)
class TrialRecord:
    """One attempt at one config for one key: its figures, or why it failed."""

    key: CacheKey
    config: dict[str, Any]
    status: str  # one of TRIAL_STATUSES; only "ok" trials may become winners
    reason: str = ""
    median_us: float | None = None
    p95_us: float | None = None
    p99_us: float | None = None
    tflops: float | None = None
    rel_err: float | None = None
    max_abs_err: float | None = None
    study: str = ""  # name of the Optuna study that proposed it
    trial_number: int | None = None
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
