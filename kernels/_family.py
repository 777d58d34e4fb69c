"""Kernel families: what the tuner needs to know about one kernel, and the registry of them.

A candidate is anything that can compute an attention point: a config of one of our kernel families
(``kind="triton"``: Triton or Gluon JIT code, tuned over a search space) or a backend (``kind="backend"``:
PyTorch's SDPA backends, FlashAttention-4 where installed; one "config", nothing to tune). All go through the
same gate and timing; the fastest correct one is served.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from ._hash import jit_hash

_PACKAGE = __name__.rpartition(".")[0]  # "flashcore.kernels"


@dataclass(frozen=True)
class KernelFamily:
    """A kernel family: its JIT code, launcher, reference, search space and rules (``kind="triton"``), or a
    backend (``kind="backend"``).

    Contract: ``launch(q, k, v, config, *, causal, sm_scale, out=None, lower_right=False)`` returns the output or
    raises a ``KernelError`` (``lower_right`` only for families with ``lengths="any"``); ``reference(q, k, v, *,
    causal, sm_scale)`` returns the fp32 truth; ``space`` names ``search_spaces/<space>.toml``. Specs are
    "module:function" relative to this package, imported on first use.
    """

    name: str
    launcher: str
    reference: str
    space: str | None
    dtypes: tuple[str, ...]
    # "file.py:function" JIT entry points (relative to kernels/) whose source, with all it calls, is the
    # kernel's hash (kernels/_hash.py); grouped-query points hash ``gqa_jit`` instead when it is given.
    jit: tuple[str, ...] = ()
    gqa_jit: tuple[str, ...] = ()
    # (hash of an earlier scheme, the jit hash of the source it named): entries stamped with such a hash are
    # served while the JIT source still hashes to the second value (the code moved, it did not change).
    legacy_hashes: tuple[tuple[str, str], ...] = ()
    kind: str = "triton"
    gqa: bool = True  # grouped-query heads (Hq a multiple of Hkv)
    lengths: str = "equal"  # "equal": q and k of one length; "any": L != S and lower-right causal too
    min_cc: str = "8.0"  # the oldest compute capability it runs on ("9.0": Hopper only)
    # "module:function" compiling a config without inputs (kernels/attention_fwd/precompile.py), and the key of
    # what the compiled kernel depends on; None: configs compile when first launched.
    precompiler: str | None = None
    compile_key: str | None = None
    # "module:factory" of what get_kernel serves: factory(config, causal) returns (q, k, v, sm_scale) -> out with
    # the launcher's results, faster; None: the launcher itself.
    server: str | None = None
    # "module:function" that raises (KernelInputError) for a config the launcher cannot take, without inputs
    # (the launcher's ``check_config``); what the runtime checks a cached config with before serving it
    # (autotune/runtime/index.py ``usable``). None: no such check.
    checker: str | None = None
    # Whether sweeps try it. False for "sdpa" (SDPA's own choice): the baseline served where nothing tuned
    # applies, never a tuned candidate.
    candidate: bool = True

    def kernel_hash(self, gqa: bool = False) -> str:
        """The hash of the JIT source a point compiles (its grouped-query entry for ``gqa``); for a backend,
        the torch and library builds it runs on (``kernels/backends.py``)."""
        if self.kind == "backend":
            return _resolve("backends:fingerprint")(self.name)
        return jit_hash(self.gqa_jit if gqa and self.gqa_jit else self.jit)

    @property
    def source_hash(self) -> str:
        """The hash of the family's (equal-heads) JIT source."""
        return self.kernel_hash(False)

    def hash_matches(self, stamped: str, gqa: bool = False) -> bool:
        """Whether an entry stamped with ``stamped`` was made by the code this process would compile."""
        current = self.kernel_hash(gqa)
        return stamped == current or any(old == stamped and now == current for old, now in self.legacy_hashes)

    def supports(self, q_heads: int, kv_heads: int, q_len: int, kv_len: int, head_dim: int) -> str | None:
        """Why this family cannot compute such a problem, or None."""
        if kv_heads != q_heads and not self.gqa:
            return f"{self.name} has no grouped-query heads"
        if q_len != kv_len and self.lengths == "equal":
            return f"{self.name} needs q and k of one length"
        if not 1 <= head_dim <= 256:
            return f"head dim {head_dim} is outside 1..256"
        return None

    def launch(self) -> Callable:
        return _resolve(self.launcher)

    def reference_fn(self) -> Callable:
        return _resolve(self.reference)

    def serving_fn(self, config: dict, causal: bool, lower_right: bool = False) -> Callable:
        """``(q, k, v, sm_scale) -> out`` for ``config``: the family's server, else its launcher. A server of a
        family of ``lengths="any"`` takes the alignment (``factory(config, causal, lower_right)``); the others
        serve equal lengths only, where the alignment changes nothing."""
        if self.server is None:
            launch = self.launch()
            extra = {"lower_right": True} if lower_right else {}
            return lambda q, k, v, sm_scale=None: launch(q, k, v, config, causal=causal, sm_scale=sm_scale, **extra)
        factory = _resolve(self.server)
        return factory(config, causal, lower_right) if self.lengths == "any" else factory(config, causal)

    def compile_key_fn(self) -> Callable | None:
        """``compile_key(q_shape, kv_shape, torch_dtype, causal, config, lower_right) -> tuple``, or None."""
        if self.compile_key is None:
            return None
        return _resolve(self.compile_key)


FAMILIES: dict[str, KernelFamily] = {}


def register(family: KernelFamily) -> KernelFamily:
    """Add ``family`` to the registry (once per name)."""
    if family.name in FAMILIES:
        raise ValueError(f"kernel family {family.name!r} is registered twice")
    FAMILIES[family.name] = family
    return family


register(KernelFamily(
    name="attention_fwd",
    launcher="attention_fwd.launch:attention_fwd",
    checker="attention_fwd.launch:check_config",
    reference="reference:attention_reference",
    space="attention_fwd",
    dtypes=("float16", "bfloat16"),
    jit=("attention_fwd/kernel.py:attn_fwd",),
    gqa_jit=("attention_fwd/kernel.py:attn_fwd_gqa",),
    # the whole-file hash of the kernel file + launch.py at f99307b (the shipped H100 fp16 table), the files that are
    # now kernels/attention_fwd/kernel.py and kernels/attention_fwd/launch.py
    legacy_hashes=(("a5c27be1af7945f5", "5aa1c00278e1c071"),),
    precompiler="attention_fwd.precompile:precompile",
    compile_key="attention_fwd.precompile:compile_key",
    server="attention_fwd.fastlaunch:FastLauncher",
))
# FP8 E4M3 (attention_fp8/quant.py recipes; the launcher takes 16-bit q, k, v and quantizes them per the config).
# Its trials need the FP8 gate (autotune/tuning/fp8_gate.py), not the fp16 one.
register(KernelFamily(
    name="attention_fp8",
    launcher="attention_fp8.launch:attention_fp8",
    checker="attention_fp8.launch:check_config",
    reference="reference:attention_reference",
    space="attention_fp8",
    dtypes=("fp8",),
    jit=("attention_fp8/kernel.py:attn_fwd_fp8", "attention_fp8/quant_fused.py:block_amax",
         "attention_fp8/quant_fused.py:cast_fp8"),
    # the whole-file hash of the FP8 kernel's five files at f99307b (the shipped H100 FP8 table)
    legacy_hashes=(("3daa245e753428e7", "abe7fbeb24a6a805"),),
    gqa=False,
    precompiler="attention_fp8.precompile:precompile",
    compile_key="attention_fp8.precompile:compile_key",
    server="attention_fp8.quant_launch:fused_launcher",
))

# Unequal lengths (KV-cache decode, chunked prefill), grouped-query heads packed per kv head, split-KV.
register(KernelFamily(
    name="attention_kv",
    launcher="attention_kv.launch:attention_kv",
    checker="attention_kv.launch:check_config",
    reference="attention_kv.reference:attention_kv_reference",
    space="attention_kv",
    dtypes=("float16", "bfloat16"),
    jit=("attention_kv/kernel.py:attn_kv_fwd", "attention_kv/kernel.py:attn_kv_combine"),
    lengths="any",
    precompiler="attention_kv.launch:precompile",
    compile_key="attention_kv.launch:compile_key",
    server="attention_kv.fastlaunch:KvServer",
))
# Warp-specialized Hopper kernel in Gluon (TMA producer warp, wgmma consumer warpgroups): sm_90 only.
register(KernelFamily(
    name="attention_gluon",
    launcher="attention_gluon.launch:attention_gluon",
    checker="attention_gluon.launch:check_config",
    reference="reference:attention_reference",
    space="attention_gluon",
    dtypes=("float16", "bfloat16"),
    jit=("attention_gluon/kernel.py:attn_fwd_ws",),
    min_cc="9.0",
    server="attention_gluon.launch:GluonServer",
))


# TEST ONLY: a family that faults on one config (tests/fault_injection.py, not shipped). get_family serves it
# only while FLASHCORE_FAULT_INJECTION=1 and the module named here imports (the test suite puts it on the path).
FAULT_INJECTION_ENV = "FLASHCORE_FAULT_INJECTION"
FAULTY_FAMILY = KernelFamily(
    name="attention_fwd_faulty",
    launcher="fault_injection:attention_fwd_faulty",
    checker="attention_fwd.launch:check_config",
    reference="reference:attention_reference",
    space="attention_fwd",
    dtypes=("float16", "bfloat16"),
    jit=("attention_fwd/kernel.py:attn_fwd",),
)


def get_family(name: str) -> KernelFamily:
    """The registered family called ``name``; KeyError with the known names otherwise.

    ``attention_fwd_faulty`` (fault injection, for tests) exists only while FLASHCORE_FAULT_INJECTION=1.
    """
    families = dict(FAMILIES)
    if os.environ.get(FAULT_INJECTION_ENV) == "1":
        families[FAULTY_FAMILY.name] = FAULTY_FAMILY
    try:
        return families[name]
    except KeyError:
        raise KeyError(f"unknown kernel {name!r}; known: {', '.join(sorted(families))}") from None


def families(kind: str | None = None) -> list[KernelFamily]:
    """The registered families (of ``kind``: "triton" or "backend"), in registration order."""
    return [f for f in FAMILIES.values() if kind is None or f.kind == kind]


def ensure_backend() -> None:
    """Pick Triton's interpreter when there is no GPU, before any kernel is decorated.

    Called by the command line and the tuning machinery (never by what model code runs: get_kernel and the op
    leave TRITON_INTERPRET as the user set it) just before a kernel module is first imported; importing this
    package has no such side effect.
    """
    if "TRITON_INTERPRET" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def resolve(spec: str) -> Callable:
    """The function named by ``"module:function"``: a module of this package, else a top-level module (the
    test suite's families live in tests/, importable only from there)."""
    module, _, attr = spec.partition(":")
    try:
        found = importlib.import_module(f"{_PACKAGE}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{_PACKAGE}.{module}" and not f"{_PACKAGE}.{module}".startswith(f"{exc.name}."):
            raise
        found = importlib.import_module(module)
    return getattr(found, attr)


_resolve = resolve
