"""Kernel families: what the tuner needs to know about one kernel, and the registry of them."""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class KernelFamily:
    """A kernel family is its JIT code, its launcher, its reference, its search space and its rules.

    Contract: ``launch(q, k, v, config, *, causal, sm_scale)`` returns the output or raises a
    ``KernelError``; ``reference(q, k, v, *, causal, sm_scale)`` returns the fp32 truth; ``space`` names the
    file ``search_spaces/<space>.toml``; ``sources`` are the files whose text defines the family's behaviour,
    hashed into every cache key so that an edited kernel never serves an old winner.
    """

    name: str
    launcher: str  # "module:function", imported on first use (importing it compiles nothing)
    reference: str
    space: str
    sources: tuple[str, ...]
    dtypes: tuple[str, ...]
    # "module:function" that compiles a config without inputs (kernels/_precompile.py), for compiling ahead of
    # timing in other processes; None: the family's configs compile when first launched.
    precompiler: str | None = None
    # "module:function" (shape, torch_dtype, causal, config) -> what the compiled kernel depends on (Triton's
    # specialization), so that one compile serves every point with that key; None: one compile job per point.
    compile_key: str | None = None
    # "module:factory" of what get_kernel serves: factory(config, causal) returns (q, k, v, sm_scale) -> out with
    # the launcher's results, faster (kernels/_fastlaunch.py, kernels/quant_launch.py); None: the launcher itself.
    server: str | None = None

    @property
    def source_hash(self) -> str:
        return _source_hash(self.sources)

    def launch(self) -> Callable:
        ensure_backend()
        return _resolve(self.launcher)

    def reference_fn(self) -> Callable:
        return _resolve(self.reference)

    def serving_fn(self, config: dict, causal: bool) -> Callable:
        """``(q, k, v, sm_scale) -> out`` for ``config``: the family's server, else its launcher."""
        if self.server is None:
            launch = self.launch()
            return lambda q, k, v, sm_scale=None: launch(q, k, v, config, causal=causal, sm_scale=sm_scale)
        ensure_backend()
        return _resolve(self.server)(config, causal)

    def compile_key_fn(self) -> Callable | None:
        """``compile_key(shape, torch_dtype, causal, config) -> tuple``, or None."""
        if self.compile_key is None:
            return None
        ensure_backend()
        return _resolve(self.compile_key)


FAMILIES: dict[str, KernelFamily] = {
    "attention_fwd": KernelFamily(
        name="attention_fwd",
        launcher="kernels.launch:attention_fwd",
        reference="kernels.reference:attention_reference",
        space="attention_fwd",
        sources=("attention_fwd.py", "launch.py"),
        dtypes=("float16", "bfloat16"),
        precompiler="kernels._precompile:precompile_attention_fwd",
        compile_key="kernels._precompile:compile_key_attention_fwd",
        server="kernels._fastlaunch:FastLauncher",
    ),
    # FP8 E4M3 (kernels/quant.py recipes; the launcher takes 16-bit q, k, v and quantizes them per the config).
    # Its trials need the FP8 gate (autotune/_fp8_gate.py), not the fp16 one.
    "attention_fp8": KernelFamily(
        name="attention_fp8",
        launcher="kernels.launch_fp8:attention_fp8",
        reference="kernels.reference:attention_reference",
        space="attention_fp8",
        sources=("attention_fp8.py", "launch_fp8.py", "quant.py", "_config.py", "launch.py"),
        dtypes=("fp8",),
        precompiler="kernels._precompile:precompile_attention_fp8",
        compile_key="kernels._precompile:compile_key_attention_fp8",
        server="kernels.quant_launch:fused_launcher",
    ),
}


# TEST ONLY: faults on one config (kernels/fault_injection.py); served by get_family only while
# FLASHCORE_FAULT_INJECTION=1, read at every lookup, and never listed in FAMILIES.
FAULT_INJECTION_ENV = "FLASHCORE_FAULT_INJECTION"
FAULTY_FAMILY = KernelFamily(
    name="attention_fwd_faulty",
    launcher="kernels.fault_injection:attention_fwd_faulty",
    reference="kernels.reference:attention_reference",
    space="attention_fwd",
    sources=("attention_fwd.py", "launch.py", "fault_injection.py"),
    dtypes=("float16", "bfloat16"),
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


def ensure_backend() -> None:
    """Pick Triton's interpreter when there is no GPU, before any kernel is decorated.

    Called by the dispatcher and the CLI just before a kernel module is first imported; importing this
    package has no such side effect.
    """
    if "TRITON_INTERPRET" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


@cache
def _source_hash(sources: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in sources:
        digest.update(name.encode())
        digest.update((_HERE / name).read_bytes())
    return digest.hexdigest()[:16]


def _resolve(spec: str) -> Callable:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)
