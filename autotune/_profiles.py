"""GPU profiles: which machine a sweep tunes for, and the facts the search space's rules need."""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import AutotuneError

CPU_GPU_NAME = "cpu-interpreter"


@dataclass(frozen=True)
class GpuProfile:
    """A tuning target. ``match`` holds substrings of the device name torch reports for such a GPU."""

    name: str
    match: tuple[str, ...]
    compute_capability: str
    smem_bytes: int  # shared memory a block may opt in to
    sm_count: int
    interpreter: bool = False


PROFILES: dict[str, GpuProfile] = {
    "h100": GpuProfile("h100", ("H100",), "9.0", 232448, 132),
    "h200": GpuProfile("h200", ("H200",), "9.0", 232448, 132),
    "cpu": GpuProfile("cpu", (), "cpu", 1 << 30, 1, interpreter=True),
}
PROFILE_CHOICES = ("auto", *PROFILES)


def cuda_device() -> tuple[str, str] | None:
    """(name, "major.minor") of the current CUDA device, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


def resolve_profile(name: str) -> GpuProfile:
    """The profile for ``--gpu NAME``; ``auto`` reads the device. Raises AutotuneError on a mismatch."""
    if name not in PROFILE_CHOICES:
        raise AutotuneError(f"unknown GPU profile {name!r}; choose one of {', '.join(PROFILE_CHOICES)}")
    device = cuda_device()
    if name == "cpu":
        return PROFILES["cpu"]
    if name == "auto":
        if device is None:
            return PROFILES["cpu"]
        for profile in PROFILES.values():
            if any(m in device[0] for m in profile.match):
                return profile
        raise AutotuneError(f"no profile for this GPU ({device[0]}, sm {device[1]}); known: h100, h200")
    profile = PROFILES[name]
    if device is None:
        raise AutotuneError(f"--gpu {name} needs an NVIDIA {name.upper()}, but this machine has no CUDA GPU (use --gpu cpu)")
    if not any(m in device[0] for m in profile.match):
        raise AutotuneError(f"--gpu {name} needs an NVIDIA {name.upper()}, but this machine's GPU is {device[0]}")
    return profile


def device_identity(profile: GpuProfile) -> tuple[str, str]:
    """(gpu name, compute capability) as written into cache keys for a sweep on ``profile``."""
    if profile.interpreter:
        return CPU_GPU_NAME, "cpu"
    device = cuda_device()
    if device is None:
        raise AutotuneError(f"profile {profile.name} needs a CUDA GPU")
    return device
