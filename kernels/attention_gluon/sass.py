"""How much of the softmax the Gluon kernel's SASS issues while the P·V wgmma is in flight (issue 22).

With OVERLAP, each consumer's loop issues ``S_j = Q K_jᵀ`` and ``O += P_{j-1} V_{j-1}`` back to back, waits for
the first only (``warpgroup_mma_wait(1)``: SASS ``WARPGROUP.DEPBAR.LE gsb0, 0x1``), runs the softmax of S_j, and
only then waits for P·V (``warpgroup_mma_wait(0)``: ``WARPGROUP.DEPBAR.LE gsb0, 0x0``). The overlap is real only
if the exponentials (``MUFU.EX2``, one per score plus one per row for alpha) are issued between those two waits;
ptxas is free to move the full wait up within its basic block, and did (the wait ended up ahead of the row max).

``overlap_report(shape, dtype, causal, config, kv_heads=None)`` compiles a config for sm_90 on this machine (no
GPU), disassembles the cubin with the ``cuobjdump`` bundled with Triton, and returns::

    {"loops": [{"partial_wait": addr, "full_wait": addr, "ex2_overlapped": n, "ex2_overlapped_max": n,
                "ex2_in_loop": n, "ex2_outside": n, "loop_instructions": n,
                "iteration_instructions": [fewest, most]}, ...],
     "overlap": min ex2_overlapped over the loops (0 without loops),
     "instructions": SASS instructions of the whole kernel (NOPs excluded),
     "local_memory_instructions": LDL + STL in the SASS, "spills": bytes (ptxas -v, as compile_info)}

What is counted, per loop (one per consumer partition; ``sass_overlap(text)`` works on any SASS listing):

* a loop is found from each ``WARPGROUP.DEPBAR.LE gsb0, 0x1`` (the partial wait) and the first
  ``WARPGROUP.DEPBAR.LE gsb0, 0x0`` after it in address order (the full wait of the same iteration);
* ``ex2_overlapped`` is the fewest ``MUFU.EX2`` on any path of forward control flow from the partial wait to
  the full wait: instructions in that address range, following fall-through (except after an unconditional
  ``BRA``/``EXIT``/``RET``) and forward branches that stay in the range (branches leaving it are slow paths such as
  mbarrier retry loops, which also fall through). It is the number of exponentials an iteration is sure to issue
  while P·V may still run, whichever arm (masked or not) it takes; ``ex2_overlapped_max`` is the most on any path
  (both equal the static count when the range has no branch);
* ``ex2_in_loop`` counts the ``MUFU.EX2`` of the loop body, from the target of the backward ``BRA`` that closes the
  loop (the first backward branch after the full wait that jumps at or before the partial wait) to that branch;
  ``ex2_outside`` those of them outside the range between the two waits (issued while P·V cannot run: 0 when
  the overlap is complete); ``loop_instructions`` its instructions (NOPs excluded): all three are static counts, so code written in both arms
  of a branch counts twice there. ``iteration_instructions`` is [fewest, most] instructions (NOPs excluded) one
  iteration issues, over the forward paths from the loop's top to its closing branch (what the arms cost at
  run time).

Configs without OVERLAP have no partial wait: ``loops`` is empty and ``overlap`` is 0. Like ``compile_info``, where
TRITON_INTERPRET is set the compile runs in the helper process of ``compile.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .._errors import KernelCompileError
from .compile import compile_kernel, in_compile_process, ptxas_report

PARTIAL_WAIT = "WARPGROUP.DEPBAR.LE gsb0, 0x1"
FULL_WAIT = "WARPGROUP.DEPBAR.LE gsb0, 0x0"
_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRA = re.compile(r"^(@!?U?P\w+\s+)?BRA(?:\.\w+)*\s+(?:`?\(?\.L_x_\d+\)?|0x([0-9a-f]+))")
_END = re.compile(r"^(EXIT|RET)\b")  # unpredicated


def cuobjdump() -> str | None:
    """Path of the cuobjdump bundled with Triton's NVIDIA backend, or None where it is missing."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def disassemble(cubin: bytes) -> str:
    """``cuobjdump -sass`` of a cubin (raises KernelCompileError where cuobjdump is missing or fails)."""
    tool = cuobjdump()
    if tool is None:
        raise KernelCompileError("cuobjdump not found next to Triton's ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        run = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True)
    if run.returncode:
        raise KernelCompileError(f"cuobjdump failed: {run.stderr.strip().splitlines()[-1:]}")
    return run.stdout


def instructions(sass: str) -> list[tuple[int, str]]:
    """(address, instruction text without the trailing ';') of every instruction of a SASS listing."""
    return [(int(m.group(1), 16), m.group(2)) for m in map(_LINE.search, sass.splitlines()) if m]


def _flow(text: str) -> tuple[int | None, bool]:
    """(branch target address or None, whether execution can fall through to the next instruction)."""
    m = _BRA.match(text)
    if m:
        return (int(m.group(2), 16) if m.group(2) else None), bool(m.group(1))
    return None, not _END.match(text)


def _path_counts(code: list[tuple[int, str]], lo: int, hi: int, weight) -> tuple[int, int]:
    """(fewest, most) of ``weight(instruction)`` summed over code[lo:hi] along forward paths from code[lo] to
    code[hi] (see the module doc)."""
    index = {addr: i for i, (addr, _) in enumerate(code)}
    inf = float("inf")
    fewest = [inf] * len(code)
    most = [-inf] * len(code)
    fewest[lo] = most[lo] = 0
    for i in range(lo, hi):
        if fewest[i] == inf:
            continue
        text = code[i][1]
        step = weight(text)
        target, falls = _flow(text)
        nexts = [i + 1] if falls else []
        if target is not None and target in index and i < index[target] <= hi:
            nexts.append(index[target])
        for n in nexts:
            fewest[n] = min(fewest[n], fewest[i] + step)
            most[n] = max(most[n], most[i] + step)
    if fewest[hi] == inf:
        raise KernelCompileError(f"no forward path from {code[lo][0]:#x} to {code[hi][0]:#x}")
    return int(fewest[hi]), int(most[hi])


def _ex2(text: str) -> int:
    return int("MUFU.EX2" in text)


def _counted(text: str) -> int:
    return int(not text.startswith("NOP"))


def sass_overlap(sass: str) -> list[dict[str, Any]]:
    """Per loop with a partial wgmma wait: the counts of the module doc, from a SASS listing."""
    code = instructions(sass)
    loops = []
    for lo, (addr, text) in enumerate(code):
        if PARTIAL_WAIT not in text:
            continue
        hi = next((i for i in range(lo + 1, len(code)) if FULL_WAIT in code[i][1]), None)
        if hi is None:
            raise KernelCompileError(f"no full wgmma wait after the partial wait at {addr:#x}")
        fewest, most = _path_counts(code, lo, hi, _ex2)
        loop = {"partial_wait": addr, "full_wait": code[hi][0], "ex2_overlapped": fewest,
                "ex2_overlapped_max": most, "ex2_in_loop": 0, "ex2_outside": 0, "loop_instructions": 0,
                "iteration_instructions": [0, 0]}
        for end in range(hi + 1, len(code)):
            target, _ = _flow(code[end][1])
            if target is not None and target <= addr:
                top = next(i for i, (a, _) in enumerate(code) if a >= target)
                body = [t for _, t in code[top:end + 1]]
                loop["ex2_in_loop"] = sum(map(_ex2, body))
                loop["ex2_outside"] = sum(_ex2(t) for i, (_, t) in enumerate(code[top:end + 1], top)
                                          if not lo < i < hi)
                loop["loop_instructions"] = sum(map(_counted, body))
                fewest, most = _path_counts(code, top, end, _counted)
                loop["iteration_instructions"] = [fewest + 1, most + 1]  # + the closing branch
                break
        loops.append(loop)
    return loops


def sass_summary(sass: str) -> dict[str, Any]:
    """``overlap_report``'s figures but spills, from a SASS listing."""
    code = instructions(sass)
    loops = sass_overlap(sass)
    return {
        "loops": loops,
        "overlap": min((loop["ex2_overlapped"] for loop in loops), default=0),
        "instructions": sum(not t.startswith("NOP") for _, t in code),
        "local_memory_instructions": sum(bool(re.match(r"^(@!?P\w+\s+)?(LDL|STL)\b", t)) for _, t in code),
    }


def kernel_report(kernel) -> dict[str, Any]:
    """``overlap_report`` of a compiled kernel (Triton's CompiledKernel for sm_90)."""
    report = sass_summary(disassemble(kernel.asm["cubin"]))
    report["spills"] = ptxas_report(kernel.asm["ptx"])[1]
    return report


def _overlap_report(shape, dtype, causal, config, kv_heads) -> dict[str, Any]:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return kernel_report(compile_kernel(shape, dtype, causal, config, kv_heads))


def overlap_report(shape: Sequence[int], dtype: torch.dtype, causal: bool, config: Mapping[str, Any],
                   kv_heads: int | None = None) -> dict[str, Any]:
    """Compile ``config`` for sm_90 (no GPU) and report its softmax/P·V overlap in SASS (see the module doc)."""
    return in_compile_process(_overlap_report, tuple(shape), str(dtype).removeprefix("torch."), causal,
                              dict(config), kv_heads)
