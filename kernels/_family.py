"""Kernel families: what the tuner needs to know about one kernel, and the registry of them.

A candidate is anything that can compute an attention point: a config of one of our kernel families
(``kind="triton"``: Triton or Gluon JIT code, tuned over a search space) or a backend (``kind="backend"``:
PyTorch's SDPA backends, FlashAttention-4 where installed; one "config", nothing to tune). All go through the
same gate and timing; the fastest correct one is served.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from flashcore.search_spaces import Arch, SearchSpace, SpaceError, read_space

from ._hash import jit_hash

_PACKAGE = __name__.rpartition(".")[0]  # "flashcore.kernels"


@dataclass(frozen=True)
class KernelFamily:
    """A kernel family: its JIT code, launcher, reference, search space and rules (``kind="triton"``), or a
    backend (``kind="backend"``).

    Contract: ``launch(q, k, v, config, *, causal, sm_scale, out=None, lower_right=False)`` returns the output or
    raises a ``KernelError`` (``lower_right`` only for families with ``lengths="any"``); ``reference(q, k, v, *,
    causal, sm_scale)`` returns the fp32 truth; ``space`` names the family whose folder's ``space.toml`` it
    searches (its own, but for test families). Specs are "module:function" relative to this package (a top-level
    module for a family registered from a folder elsewhere), imported on first use.
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
    # What the GPU architecture must have (fields of search_spaces.arch.Arch: "wgmma", "tma", "warp_specialize");
    # () runs on every supported GPU (sm_80 on) and, for Triton code, in the interpreter.
    needs: tuple[str, ...] = ()
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
    # "module" of the family's named validity rules (imported before its space is read: they register by name).
    rules: str | None = None
    # One of our "default" families: what get_kernel's kernel="own" serves (the first of them, in registry order,
    # that can compute a point), what the interpreter tunes, and (the first) the family tune_point and
    # study-search take when none is named.
    default: bool = False
    # "module:object" of the family's extra trial steps (TrialHooks, kernels/_hooks.py): a trial of the family
    # runs ``hooks.kernel_call`` and gates with ``hooks.verdict`` (FP8: quantize once, the FP8 gate); None:
    # the launcher on the inputs, the 16-bit gate.
    trial: str | None = None
    # The folder holding the family's space.toml (set by the registry from the declaration's own folder).
    folder: str | None = None

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

    def runs_on(self, arch: Arch) -> bool:
        """Whether the family runs on architecture ``arch`` (``search_spaces.arch``; the interpreter runs plain
        Triton code only: no backend, nothing that needs an architecture's feature)."""
        if arch.interpreter:
            return self.kind != "backend" and not self.needs
        return all(getattr(arch, need) for need in self.needs)

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

    def trial_hooks(self):
        """The family's extra trial steps (``trial``), or None."""
        return _resolve(self.trial) if self.trial else None

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


# -- the one list of the package's families ---------------------------------------------------------------------
# Each name is a folder of this package holding a family's declaration (``family.py``: ``FAMILY = KernelFamily(...)``)
# and everything else that is the family's (README.md in this folder: the recipe). The order is the registry's:
# the order in which candidates are listed, and in which the "default" families serve.
FAMILY_FOLDERS = ("attention_fwd", "attention_fp8", "attention_kv", "attention_gluon")

# TEST ONLY: a family that faults on one config (tests/fault_family.py, not shipped). get_family serves it only
# while FLASHCORE_FAULT_INJECTION=1 and the module named here imports (the test suite puts it on the path).
FAULT_INJECTION_ENV = "FLASHCORE_FAULT_INJECTION"
FAULT_INJECTION_FAMILY = "fault_family:FAMILY"


def load_folder(module: str, folder: str | os.PathLike | None = None) -> KernelFamily:
    """Register the family declared by ``module`` (its ``FAMILY``), with ``folder`` (default: the module's own
    folder) as the folder that holds its ``space.toml``. ``module`` is a dotted name: of this package for its own
    families (``load_builtin``), a top-level one for a family from elsewhere (``register_folder``)."""
    found = importlib.import_module(module)
    family = found.FAMILY
    where = Path(folder) if folder is not None else Path(found.__file__).resolve().parent
    return register(replace(family, folder=str(where)))


def load_builtin() -> None:
    """Register the package's own families (FAMILY_FOLDERS), once."""
    for name in FAMILY_FOLDERS:
        if name not in FAMILIES:
            load_folder(f"{_PACKAGE}.{name}.family")


def register_folder(path: str | os.PathLike) -> KernelFamily:
    """Register the family in folder ``path`` (a folder like the package's own: ``family.py`` declaring
    ``FAMILY``, its modules named in it as ``"<folder name>.<module>:<function>"``): the folder's parent goes on
    ``sys.path``, so that the folder imports as a top-level package of its own name."""
    path = Path(path).resolve()
    parent = str(path.parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    return load_folder(f"{path.name}.family", path)


def unregister(name: str) -> None:
    """Remove the family ``name`` (a family registered from a folder, in tests); KeyError if it is not there."""
    del FAMILIES[name]


def get_family(name: str) -> KernelFamily:
    """The registered family called ``name``; KeyError with the known names otherwise.

    The fault-injection family (FAULT_INJECTION_FAMILY, for tests) exists only while FLASHCORE_FAULT_INJECTION=1.
    """
    families = dict(FAMILIES)
    if os.environ.get(FAULT_INJECTION_ENV) == "1":
        faulty = _resolve(FAULT_INJECTION_FAMILY)
        families[faulty.name] = faulty
    try:
        return families[name]
    except KeyError:
        raise KeyError(f"unknown kernel {name!r}; known: {', '.join(sorted(families))}") from None


def families(kind: str | None = None) -> list[KernelFamily]:
    """The registered families (of ``kind``: "triton" or "backend"), in registration order."""
    return [f for f in FAMILIES.values() if kind is None or f.kind == kind]


def default_families() -> tuple[str, ...]:
    """The names of our "default" families (``KernelFamily.default``), in registry order."""
    return tuple(f.name for f in FAMILIES.values() if f.default)


def default_family() -> str:
    """The family tune_point, study-search and the command line take when none is named: the first default."""
    return default_families()[0]


def families_of_dtype(dtype: str) -> tuple[str, ...]:
    """The candidate families of ours that take ``dtype`` (a base dtype: "float16", "fp8"), in registry order."""
    return tuple(f.name for f in FAMILIES.values() if f.kind != "backend" and f.candidate and dtype in f.dtypes)


def load_space(name: str, profile: str = "default") -> SearchSpace:
    """The search space of family ``name`` (its folder's ``space.toml``, its rules registered) for GPU profile
    ``profile``: the profile's ``[profiles.<profile>]`` table overrides the parameters and default where the file
    has one (``cpu`` for the interpreter; a GPU profile's name, ``h100``, ``h200``, or a device's). SpaceError
    when the family has no space."""
    try:
        family = get_family(name)
    except KeyError:
        raise SpaceError(f"no search space for kernel {name!r} (no such family)") from None
    if family.folder is None or family.kind == "backend":
        raise SpaceError(f"no search space for kernel {name!r} (kernels/<family>/space.toml)")
    if family.rules:
        _import(family.rules)
    return read_space(Path(family.folder) / "space.toml", name, profile)


def resolve(spec: str) -> Callable:
    """The function named by ``"module:function"``: a module of this package, else a top-level module (the
    test suite's families live in tests/, importable only from there)."""
    module, _, attr = spec.partition(":")
    return getattr(_import(module), attr)


def _import(module: str):
    """A module of this package by its relative name, else a top-level one (families registered from a folder)."""
    try:
        return importlib.import_module(f"{_PACKAGE}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{_PACKAGE}.{module}" and not f"{_PACKAGE}.{module}".startswith(f"{exc.name}."):
            raise
        return importlib.import_module(module)


_resolve = resolve
