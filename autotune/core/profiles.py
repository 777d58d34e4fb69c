"""GPU profiles: which machine a sweep tunes for, and the facts the search space's rules need.

The facts (SM count, shared memory a block may opt in to, compute capability) come from the device
(``torch.cuda.get_device_properties``, through ``kernels._common.device_facts``) whenever one is present; the
named profiles only add what a device cannot say (which names match it) and take the planning figures of their
architecture's record (``search_spaces.arch``) for a machine without one. Any NVIDIA GPU of compute capability 8.0
or newer gets a profile (``--gpu auto``); what an architecture lacks (tensor descriptors, warp specialization,
wgmma: the Gluon family) is ruled out by named rules and families' ``needs``, which read the profile's ``arch``.
A profile's name also picks its ``[profiles.<name>]`` table in a family's space.toml, where the file has one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from flashcore.search_spaces.arch import ARCHS, INTERPRETER, Arch, arch_of, cc_tuple

from .errors import AutotuneError

CPU_GPU_NAME = "cpu-interpreter"
MIN_CC = (8, 0)


@dataclass(frozen=True)
class GpuProfile:
    """A tuning target. ``match`` holds substrings of the device name torch reports for such a GPU."""

    name: str
    match: tuple[str, ...]
    compute_capability: str
    smem_bytes: int  # shared memory a block may opt in to
    sm_count: int
    interpreter: bool = False

    @property
    def arch(self) -> Arch:
        """The architecture record of this profile's compute capability (``search_spaces.arch``): what exists
        there (wgmma, TMA, warp specialization) and its limits; every rule reads it."""
        return INTERPRETER if self.interpreter else arch_of(self.compute_capability)


def _planned(name: str, match: tuple[str, ...], arch: Arch) -> GpuProfile:
    """A named profile for planning without the device: its architecture record's figures (the device's own
    replace them whenever it is present, ``device_profile``)."""
    return GpuProfile(name, match, arch.compute_capability, arch.smem_per_block, arch.sm_count)


PROFILES: dict[str, GpuProfile] = {
    # H100 SXM and H200: one architecture (sm_90), 132 SMs each; they differ in memory, which no rule reads
    "h100": _planned("h100", ("H100",), ARCHS["9.0"]),
    "h200": _planned("h200", ("H200",), ARCHS["9.0"]),
    "cpu": GpuProfile("cpu", (), INTERPRETER.compute_capability, INTERPRETER.smem_per_block, INTERPRETER.sm_count,
                      interpreter=True),
}
PROFILE_CHOICES = ("auto", *PROFILES)


_cc = cc_tuple


def cuda_device() -> tuple[str, str] | None:
    """(name, "major.minor") of the current CUDA device, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


def device_profile(base: GpuProfile | None = None) -> GpuProfile:
    """The profile of the current CUDA device: ``base`` (or a new one named after the device) with the facts
    the device reports. AutotuneError below compute capability 8.0."""
    import torch

    from flashcore.kernels._common import device_facts

    facts = device_facts(torch.cuda.current_device())
    if _cc(facts.compute_capability) < MIN_CC:
        raise AutotuneError(f"{facts.name} (sm {facts.compute_capability}) is older than sm 8.0: the kernels need "
                            "an Ampere GPU or newer")
    if base is None:
        slug = re.sub(r"[^a-z0-9]+", "-", facts.name.lower().removeprefix("nvidia ")).strip("-") or "gpu"
        base = GpuProfile(slug, (facts.name,), facts.compute_capability, facts.smem_per_block, facts.sm_count)
    return replace(base, compute_capability=facts.compute_capability, smem_bytes=facts.smem_per_block,
                   sm_count=facts.sm_count)


def resolve_profile(name: str) -> GpuProfile:
    """The profile for ``--gpu NAME``; ``auto`` reads the device. Raises AutotuneError on a mismatch."""
    if name not in PROFILE_CHOICES:
        raise AutotuneError(f"unknown GPU profile {name!r}; choose one of {', '.join(PROFILE_CHOICES)}")
    if name == "cpu":
        return PROFILES["cpu"]
    device = cuda_device()
    if name == "auto":
        if device is None:
            return PROFILES["cpu"]
        known = [p for p in PROFILES.values() if p.match and any(m in device[0] for m in p.match)]
        return device_profile(known[0] if known else None)
    profile = PROFILES[name]
    if device is None:
        raise AutotuneError(f"--gpu {name} needs an NVIDIA {name.upper()}, but this machine has no CUDA GPU (use --gpu cpu)")
    if not any(m in device[0] for m in profile.match):
        raise AutotuneError(f"--gpu {name} needs an NVIDIA {name.upper()}, but this machine's GPU is {device[0]}")
    return device_profile(profile)


def device_identity(profile: GpuProfile) -> tuple[str, str]:
    """(gpu name, compute capability) as written into cache keys for a sweep on ``profile``."""
    if profile.interpreter:
        return CPU_GPU_NAME, "cpu"
    device = cuda_device()
    if device is None:
        raise AutotuneError(f"profile {profile.name} needs a CUDA GPU")
    return device


def serving_profile(gpu_name: str) -> GpuProfile:
    """The profile whose rules and default config get_kernel uses for device ``gpu_name`` (the current device's
    own facts when it is that device; else the named profile that matches, else an H100's)."""
    if gpu_name == CPU_GPU_NAME:
        return PROFILES["cpu"]
    known = [p for p in PROFILES.values() if p.match and any(m in gpu_name for m in p.match)]
    device = cuda_device()
    if device is not None and device[0] == gpu_name:
        return device_profile(known[0] if known else None)
    return known[0] if known else PROFILES["h100"]
