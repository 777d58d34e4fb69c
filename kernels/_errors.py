"""Typed errors a launcher raises, so the tuner can record why a config failed and carry on."""


class KernelError(Exception):
    """A config could not produce an output. ``kind`` is the trial status the tuner records."""

    kind = "launch_error"


class KernelInputError(KernelError, ValueError):
    """The inputs are not something this kernel supports (shape, dtype, device, head dim)."""

    kind = "invalid"


class KernelCompileError(KernelError):
    """Triton could not compile the kernel for this config."""

    kind = "compile_error"


class KernelResourceError(KernelError):
    """The config needs more shared memory, registers or device memory than the GPU has."""

    kind = "resources"


class KernelLaunchError(KernelError):
    """The kernel compiled but failed at launch or while running."""

    kind = "launch_error"
