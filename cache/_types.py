"""The cache's contract: the key of a tuned point and the entries stored under it.

Every stage shares these types: the sweep writes them, the dispatcher reads them, export and import
serialise them. They are validated at the boundaries (import, CLI), not everywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

# The one dtype vocabulary: every module that names a dtype takes it from here (``flashcore.cache``).
HALF_DTYPES = ("float16", "bfloat16")  # the 16-bit dtypes: what every kernel takes and returns
DTYPES = (*HALF_DTYPES, "fp8")  # what a cache key may hold (fp8 with its budget: "fp8-tol0.03", below)
ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "fp8": 1}
# FP8 keys carry their error budget in the dtype: "fp8" is the default budget (relative L2 error 0.1 against
# the fp32 truth), "fp8-tol<budget>" any other, written with Python's "g" format ("fp8-tol0.03"). Winners
# under different budgets are then different keys (they coexist in one cache and are served apart) without
# a schema change. The functions below are the one place this label is made and parsed.
DEFAULT_FP8_TOL = 0.1
_FP8_PREFIX = "fp8-tol"
TRIAL_STATUSES = ("ok", "invalid", "compile_error", "resources", "launch_error", "gate_failed", "timeout", "crashed")


def normalize_problem(obj: Any) -> None:
    """Give a frozen problem description (a cache key, a point) its one canonical form: kv_heads / kv_len 0 mean
    "as many as the queries"; ``lower_right`` only where it changes something (causal, unequal lengths); and one
    query aligned bottom-right sees every key, so it is no mask at all (a decode step)."""
    def put(name: str, value: Any) -> None:
        object.__setattr__(obj, name, value)

    if not obj.kv_heads:
        put("kv_heads", obj.heads)
    if not obj.kv_len:
        put("kv_len", obj.seq_len)
    if obj.lower_right and (not obj.causal or obj.kv_len == obj.seq_len):
        put("lower_right", False)
    if obj.lower_right and obj.seq_len == 1:
        put("lower_right", False)
        put("causal", False)


@dataclass(frozen=True)
class CacheKey:
    """Names one tuned problem point for one candidate on one toolchain.

    A key names what decides the compiled kernel (GPU, Triton version, the candidate and the hash of its JIT
    source, or for a backend the fingerprint of its builds) and the problem's dimensions: batch, query heads,
    key/value heads, query length (``seq_len``), key/value length (``kv_len``), head dim, causal (and whether its
    mask is aligned bottom-right, ``lower_right``, meaningful only when the lengths differ) and dtype. The torch
    version is not part of it: the Triton kernels do not depend on the torch build (entries record it). Two
    keys are equal only when every field is, so a winner of another Triton or an edited kernel is a different
    key. ``kv_heads`` and ``kv_len`` left at 0 mean "as many as the queries"; ``lower_right`` is normalised to
    False where it changes nothing.
    """

    gpu: str  # device name as torch reports it, e.g. "NVIDIA H100 80GB HBM3"; "cpu-interpreter" for the CPU
    compute_capability: str  # "9.0"; "cpu" for the interpreter
    triton_version: str
    kernel: str  # candidate name, e.g. "attention_fwd" or "sdpa_cudnn"
    kernel_hash: str  # hash of the kernel's JIT source, or of a backend's builds
    dtype: str  # one of DTYPES
    causal: bool
    head_dim: int
    seq_len: int  # query length L
    batch: int
    heads: int  # query heads
    kv_heads: int = 0
    kv_len: int = 0
    lower_right: bool = False

    def __post_init__(self) -> None:
        normalize_problem(self)

    @property
    def id(self) -> str:
        """A stable text id for the key (sha256 of its canonical JSON), used as the winners' primary key."""
        blob = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, in order: ``dataclasses.asdict`` without its deep copy (every field is a scalar),
        which was most of the cost of writing a large import."""
        return {name: getattr(self, name) for name in _KEY_FIELDS}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


_KEY_FIELDS = CacheKey.field_names()

FIGURES = ("median_us", "p95_us", "p99_us", "tflops", "rel_err")  # what a measurement reports


def figures_of(obj: Any) -> dict[str, Any]:
    """The FIGURES of an entry, trial record or trial outcome, by name: the one place they are copied."""
    return {name: getattr(obj, name) for name in FIGURES}


@dataclass(frozen=True)
class Entry:
    """The winning config of one key, with the figures it was chosen on and the torch it was measured with."""

    key: CacheKey
    config: dict[str, Any]
    median_us: float
    p95_us: float
    p99_us: float
    tflops: float
    rel_err: float
    created_at: str  # ISO-8601 UTC
    torch_version: str = "unknown"

    @classmethod
    def from_trial(cls, rec: TrialRecord) -> Entry:
        """The entry a passing trial becomes."""
        return cls(key=rec.key, config=dict(rec.config), **figures_of(rec), created_at=rec.created_at,
                   torch_version=rec.torch_version)


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
    torch_version: str = "unknown"


def fp8_dtype(tol: float = DEFAULT_FP8_TOL) -> str:
    """The dtype label of FP8 under error budget ``tol`` (a relative L2 error in (0, 1]); ValueError otherwise."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol <= 1:  # NaN fails too
        raise ValueError(f"the FP8 error budget must be a number in (0, 1] (a relative L2 error); got {tol!r}")
    return "fp8" if float(tol) == DEFAULT_FP8_TOL else f"{_FP8_PREFIX}{float(tol):g}"


def fp8_tol(dtype: str) -> float | None:
    """The error budget of an FP8 dtype label ("fp8" -> 0.1, "fp8-tol0.03" -> 0.03); None for other dtypes.

    ValueError for a malformed or non-canonical FP8 label ("fp8-tol0.030", "fp8-tol0.1", "fp8-tolx")."""
    if dtype == "fp8":
        return DEFAULT_FP8_TOL
    if not isinstance(dtype, str) or not dtype.startswith("fp8"):
        return None
    try:
        tol = float(dtype[len(_FP8_PREFIX):]) if dtype.startswith(_FP8_PREFIX) else float("nan")
        canonical = fp8_dtype(tol)
    except ValueError:
        canonical = None
    if canonical != dtype:
        raise ValueError(f"malformed FP8 dtype {dtype!r}: expected fp8 (budget {DEFAULT_FP8_TOL:g}) or "
                         f"{_FP8_PREFIX}<budget in (0, 1]>" + (f", here {canonical}" if canonical else ""))
    return tol


def base_dtype(dtype: str) -> str:
    """The dtype without its FP8 budget ("fp8-tol0.03" -> "fp8"); ValueError for an unknown dtype."""
    if fp8_tol(dtype) is not None:
        return "fp8"
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of float16, bfloat16, fp8 "
                         f"(or {_FP8_PREFIX}<budget>)")
    return dtype
