"""One record per GPU architecture: what a compute capability has (instructions, variants, per-SM limits).

What a device can say about itself (its SM count, the shared memory a block may opt in to) is read from the device
(``kernels._common.device_facts``) and carried by the GPU profile (``autotune.core.profiles``); what it cannot say
(whether wgmma, the Tensor Memory Accelerator or Triton's warp specialization exist there) is written here, once,
and read by every rule, space profile and launcher through :func:`arch_of` (a profile's ``arch``). The SM count
and shared-memory figures below are planning figures for a machine without the device, never used over the
device's own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    """A GPU architecture (or Triton's CPU interpreter, ``interpreter=True``)."""

    name: str                 # "sm_90"
    compute_capability: str   # "9.0"
    wgmma: bool               # warpgroup MMA (Hopper's tensor-core instruction; the Gluon kernel is built on it)
    tma: bool                 # tensor descriptors (the Tensor Memory Accelerator)
    warp_specialize: bool     # Triton's warp specialization (setmaxnreg, asynchronous barriers)
    registers_per_thread: int = 255
    registers_per_sm: int = 65536
    smem_per_block: int = 0   # the most a block may opt in to (planning figure; the device's own wins)
    smem_per_sm: int = 0
    sm_count: int = 0         # planning figure for grids built without the device (the device's own wins)
    interpreter: bool = False

    @property
    def hopper_features(self) -> bool:
        """TMA and warp specialization both exist (the variants the fwd space's Hopper rules gate)."""
        return self.tma and self.warp_specialize


_KIB = 1024
ARCHS: dict[str, Arch] = {a.compute_capability: a for a in (
    Arch("sm_80", "8.0", wgmma=False, tma=False, warp_specialize=False, smem_per_block=163 * _KIB,
         smem_per_sm=164 * _KIB, sm_count=108),
    Arch("sm_86", "8.6", wgmma=False, tma=False, warp_specialize=False, smem_per_block=99 * _KIB,
         smem_per_sm=100 * _KIB, sm_count=84),
    Arch("sm_89", "8.9", wgmma=False, tma=False, warp_specialize=False, smem_per_block=99 * _KIB,
         smem_per_sm=100 * _KIB, sm_count=128),
    Arch("sm_90", "9.0", wgmma=True, tma=True, warp_specialize=True, smem_per_block=227 * _KIB,
         smem_per_sm=228 * _KIB, sm_count=132),
    Arch("sm_100", "10.0", wgmma=False, tma=True, warp_specialize=True, smem_per_block=227 * _KIB,
         smem_per_sm=228 * _KIB, sm_count=148),
    Arch("sm_120", "12.0", wgmma=False, tma=True, warp_specialize=True, smem_per_block=99 * _KIB,
         smem_per_sm=100 * _KIB, sm_count=170),
)}
INTERPRETER = Arch("interpreter", "cpu", wgmma=False, tma=False, warp_specialize=False, smem_per_block=1 << 30,
                   smem_per_sm=1 << 30, sm_count=1, interpreter=True)


def cc_tuple(text: str) -> tuple[int, int]:
    """"9.0" -> (9, 0); anything else (the interpreter's "cpu") -> (0, 0)."""
    major, _, minor = str(text).partition(".")
    return (int(major), int(minor or 0)) if major.isdigit() and (minor or "0").isdigit() else (0, 0)


def arch_of(compute_capability: str) -> Arch:
    """The record of ``compute_capability`` ("9.0"; "cpu": the interpreter). An unknown capability gets the
    record of its major version's first one (8.7 -> sm_80's features), else one that has none of the features,
    with sm_80's limits: nothing is assumed to exist that was not written down."""
    if compute_capability == "cpu":
        return INTERPRETER
    cc = str(compute_capability)
    if cc in ARCHS:
        return ARCHS[cc]
    major, _ = cc_tuple(cc)
    base = ARCHS.get(f"{major}.0")
    if base is not None:
        return Arch(f"sm_{cc.replace('.', '')}", cc, base.wgmma, base.tma, base.warp_specialize,
                    base.registers_per_thread, base.registers_per_sm, base.smem_per_block, base.smem_per_sm,
                    base.sm_count)
    old = ARCHS["8.0"]
    return Arch(f"sm_{cc.replace('.', '')}", cc, False, False, False, old.registers_per_thread,
                old.registers_per_sm, old.smem_per_block, old.smem_per_sm, old.sm_count)


def profile_arch(profile) -> Arch:
    """The architecture record of a profile-like object (``arch``, else its ``compute_capability``, else sm_90;
    ``interpreter=True``: the interpreter)."""
    arch = getattr(profile, "arch", None)
    if isinstance(arch, Arch):
        return arch
    if getattr(profile, "interpreter", False):
        return INTERPRETER
    return arch_of(str(getattr(profile, "compute_capability", "9.0")))
