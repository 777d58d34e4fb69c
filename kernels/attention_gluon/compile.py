"""Compile a config of the Gluon kernel for sm_90 without a GPU, and report what it costs.

``compile_info(shape, dtype, causal, config, kv_heads=None)`` builds exactly the descriptors and constexprs the
launcher would pass (from ``meta`` tensors: no memory, no device), compiles with ``triton.compile`` for the
target ``cuda:90`` (Triton picks sm_90a: wgmma and setmaxnreg need it), then runs the wheel's ``ptxas -v`` on the
PTX for the register and spill figures (Triton does not keep them without loading the cubin on a GPU).

Returns ``{"regs", "spills", "shared", "setmaxnreg", "setmaxnreg_counts", "maxnreg", "compile_s"}``: regs is what
ptxas allocates per thread at launch (the kernel's .maxnreg; partitions then move registers with setmaxnreg),
spills the bytes spilled (stores + loads), shared the bytes of shared memory per CTA, setmaxnreg whether the PTX
has setmaxnreg (warp specialization gave registers back), setmaxnreg_counts its sorted distinct counts. Raises
the launcher's typed KernelError (KernelInputError for a bad config or shape, KernelCompileError when Triton or
ptxas fail).

``gluon.jit`` ignores TRITON_INTERPRET, but a process that has run interpreted Triton kernels has Triton's
language patched by the interpreter, and a first Gluon compile there fails ("'ir.value' object has no attribute
'dtype'"; a cached one hides it). So where TRITON_INTERPRET is set, ``compile_info`` compiles in one spawned
helper process without it (started on first use, reused). Also a CLI:
``python -m flashcore.kernels.attention_gluon.compile [--shape B,H,S,D] [--causal]``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from flashcore.cache import HALF_DTYPES

from .._errors import KernelCompileError, KernelInputError
from .._common import SUPPORTED_DTYPES, typed_errors as _typed_errors
from ..interpreter import interpreting, suspended
from .launch import check_config, kernel_args
from .config import HEAD_DIMS

TARGET_ARCH = 90
_SETMAXNREG = re.compile(r"setmaxnreg\.(?:inc|dec)\.sync\.aligned\.u32\s+(\d+)")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_kernel(shape: Sequence[int], dtype: torch.dtype, causal: bool, config: Mapping[str, Any],
                   kv_heads: int | None = None):
    """Triton's CompiledKernel of ``config`` for (B, Hq, S, D) ``shape`` on sm_90 (nothing is loaded)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from .kernel import attn_fwd_ws

    cfg = check_config(config)
    b, hq, s, d = (int(x) for x in shape)
    hkv = hq if kv_heads is None else int(kv_heads)
    if dtype not in SUPPORTED_DTYPES:
        raise KernelInputError(f"dtype must be float16 or bfloat16; got {dtype}")
    if d not in HEAD_DIMS or min(b, hq, hkv, s) < 1 or hq % hkv:
        raise KernelInputError(f"unsupported shape {tuple(shape)} with {hkv} kv heads")
    q, out = (torch.empty((b, hq, s, d), dtype=dtype, device="meta") for _ in range(2))
    k, v = (torch.empty((b, hkv, s, d), dtype=dtype, device="meta") for _ in range(2))
    _, args, kwargs = kernel_args(q, k, v, out, cfg, causal, None)
    options = {"num_warps": kwargs.pop("num_warps"), "maxnreg": kwargs.pop("maxnreg")}
    names = attn_fwd_ws.arg_names
    signature = {name: mangle_type(arg) for name, arg in zip(names, args)}
    signature.update({name: "constexpr" for name in kwargs})
    src = GluonASTSource(attn_fwd_ws, signature, kwargs)
    with _typed_errors():
        return triton.compile(src, target=GPUTarget("cuda", TARGET_ARCH, 32), options=options)


def ptxas_report(ptx: str) -> tuple[int, int]:
    """(registers, spill bytes) that ``ptxas -v`` reports for ``ptx`` on sm_90a."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        cmd = [get_ptxas(TARGET_ARCH).path, "-v", f"--gpu-name=sm_{TARGET_ARCH}a", str(src),
               "-o", str(Path(tmp) / "kernel.cubin")]
        run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        raise KernelCompileError(f"ptxas failed: {run.stderr.strip().splitlines()[-1:]}")
    regs = _PTXAS_REGS.search(run.stderr)
    spills = _PTXAS_SPILLS.search(run.stderr)
    if not regs or not spills:
        raise KernelCompileError(f"unexpected ptxas report: {run.stderr.strip()[:200]}")
    return int(regs.group(1)), int(spills.group(1)) + int(spills.group(2))


_POOL: tuple[int, object] | None = None  # (the process that started it, the executor)


def in_compile_process(fn, *args):
    """``fn(*args)`` where Gluon can compile: here, or where TRITON_INTERPRET is set, in one spawned helper
    process started without it (started on first use, reused; see the module doc). ``fn`` and ``args`` must
    pickle."""
    global _POOL
    if not interpreting():
        return fn(*args)
    if _POOL is None or _POOL[0] != os.getpid():  # a forked child cannot use its parent's executor
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with suspended():  # the helper starts now, without the interpreter in its environment
            _POOL = (os.getpid(), ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
            _POOL[1].submit(int, 0).result()
    return _POOL[1].submit(fn, *args).result()


def compile_info(shape: Sequence[int], dtype: torch.dtype, causal: bool, config: Mapping[str, Any],
                 kv_heads: int | None = None) -> dict[str, Any]:
    """Compile for sm_90 on this machine (no GPU needed) and report the kernel's resources (see module doc)."""
    return in_compile_process(_compile_info, tuple(shape), str(dtype).removeprefix("torch."), causal,
                              dict(config), kv_heads)


def _compile_info(shape, dtype, causal, config, kv_heads) -> dict[str, Any]:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    start = time.perf_counter()
    kernel = compile_kernel(shape, dtype, causal, config, kv_heads)
    ptx = kernel.asm["ptx"]
    regs, spills = ptxas_report(ptx)
    maxnreg = re.search(r"\.maxnreg\s+(\d+)", ptx)
    counts = sorted({int(n) for n in _SETMAXNREG.findall(ptx)})
    return {
        "regs": regs,
        "spills": spills,
        "shared": int(kernel.metadata.shared),
        "setmaxnreg": bool(counts),
        "setmaxnreg_counts": counts,
        "maxnreg": int(maxnreg.group(1)) if maxnreg else None,
        "compile_s": round(time.perf_counter() - start, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print compile_info for the default config (or --config JSON) at one shape."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8,16,4096,128", help="B,Hq,S,D")
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--dtype", choices=HALF_DTYPES, default="float16")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--config", default='{"BLOCK_M": 64, "BLOCK_N": 128}', help="config as JSON")
    ns = parser.parse_args(argv)
    shape = [int(x) for x in ns.shape.split(",")]
    info = compile_info(shape, getattr(torch, ns.dtype), ns.causal, json.loads(ns.config), ns.kv_heads)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
