"""The Gluon kernel on a Hopper GPU against the fp32 reference (kv heads repeated for GQA), over odd shapes, with
planted large values and a NaN-poisoned output, for the default config and each variant switch.

Every launch runs in a child process (``python benchmarks/gluon_smoke.py --child ...``) under a timeout,
so a wrong barrier protocol fails the test as a hang instead of hanging the test run. Tolerances as the gate's:
float16 atol 2e-3 rtol 1e-3, bfloat16 1.6e-2 each (every element, and no element NaN or never written).

Tiers (tests/_tiers.py): each child process costs seconds before its first launch, so the fast tier runs the
default config on four shapes (GQA, one token, D 256, the longest) and one variant in each of the strided and
guard checks; every variant over every shape runs under `-m gpu` only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gluon_smoke as smoke  # noqa: E402  (the GPU smoke script: its child mode runs one launch)
from _tiers import tiered  # noqa: E402

pytestmark = pytest.mark.gpu
TIMEOUT_PER_SHAPE = 30.0
TIMEOUT_BASE = 60.0

# (B, Hq, Hkv, S, D, causal, dtype): S never a multiple of a block, odd heads, B 3, GQA 32/8 and 6/2, one token.
SHAPES = [
    (3, 5, 5, 77, 64, True, "float16"),
    (1, 2, 2, 200, 64, False, "float16"),
    (2, 32, 8, 300, 128, True, "bfloat16"),
    (1, 6, 2, 513, 128, False, "float16"),
    (1, 6, 2, 513, 128, True, "bfloat16"),
    (1, 3, 3, 1, 64, True, "float16"),
    (2, 4, 4, 1000, 64, False, "bfloat16"),
    (1, 3, 1, 701, 128, True, "float16"),
    (1, 2, 1, 333, 256, True, "bfloat16"),
    (1, 1, 1, 4096 + 17, 128, True, "float16"),
]


def _id(shape) -> str:
    b, hq, hkv, s, d, causal, dtype = shape
    heads = f"H{hq}" if hq == hkv else f"H{hq}-KV{hkv}"
    return f"B{b}-{heads}-S{s}-D{d}-{'causal' if causal else 'full'}-{dtype}"


def _run(mode: str, job: dict, timeout: float) -> tuple[list[dict], str]:
    """The child's JSON lines and "" | "hang" | "crash: <last stderr line>"."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gluon_smoke.py"), mode, json.dumps(job)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        problem = "" if proc.returncode == 0 else "crash: " + (err.strip().splitlines() or ["?"])[-1][:300]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        problem = f"hang (killed after {timeout:.0f}s)"
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], problem


def _check(config: dict, shapes, **options) -> None:
    job = {"config": config, "shapes": [list(s) for s in shapes], "planted": True, **options}
    lines, problem = _run("--child", job, TIMEOUT_BASE + TIMEOUT_PER_SHAPE * len(shapes))
    done = {tuple(r["shape"]): r for r in lines}
    bad = []
    for shape in shapes:
        r = done.get(tuple(shape))
        if r is None:
            bad.append(f"{_id(shape)}: {problem or 'no result'}")
            break  # the child stopped here: later shapes never ran
        if r["status"] not in ("ok", "skip"):
            bad.append(f"{_id(shape)}: {smoke.describe(r)}")
    assert not bad, f"{config}:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("shape", tiered(SHAPES, [_id(s) for s in SHAPES], fast=[
    "B2-H32-KV8-S300-D128-causal-bfloat16", "B1-H3-S1-D64-causal-float16", "B1-H2-KV1-S333-D256-causal-bfloat16",
    "B1-H1-S4113-D128-causal-float16"]))
def test_default_config_matches_reference(shape):
    _check(smoke.config_of("default"), [shape])


@pytest.mark.slow  # every variant over every shape: the fast tier checks one variant in the two tests below
@pytest.mark.parametrize("variant", [v for v in smoke.VARIANTS if v != "default"])
def test_variant_matches_reference(variant):
    _check(smoke.config_of(variant), SHAPES)


@pytest.mark.parametrize("variant", ["default", pytest.param("pingpong+overlap", marks=pytest.mark.slow)])
def test_strided_inputs_and_output(variant):
    """q, k, v as (B, S, H, D) tensors viewed as (B, H, S, D) (TMA-ready strides: no copy), and an output view
    whose layout is not TMA-ready (written through a temporary)."""
    _check(smoke.config_of(variant), [SHAPES[0], SHAPES[3]], bshd=True)


@pytest.mark.parametrize("variant", [pytest.param("default", marks=pytest.mark.slow), "persistent+pingpong+overlap",
                                     pytest.param("one-consumer+overlap", marks=pytest.mark.slow)])
def test_reads_and_writes_stay_within_s(variant):
    """Inputs and output are views over buffers with NaN rows after S in every head: a tile that read past S
    (instead of the descriptor's zero fill) gives NaNs, one that wrote past S changes the guard rows."""
    _check(smoke.config_of(variant), [SHAPES[0], SHAPES[2], SHAPES[5]], guard=True)


def test_sm_scale_is_honoured():
    _check(smoke.config_of("default"), [SHAPES[1]], sm_scale=0.3)


def test_shared_memory_overflow_is_a_typed_error():
    """A config over the shared memory of a block fails as KernelResourceError (not a crash or a hang)."""
    lines, problem = _run("--child", {"config": {"BLOCK_M": 64, "BLOCK_N": 128, "STAGES": 4},
                                      "shapes": [[1, 2, 2, 512, 128, False, "float16"]], "planted": False,
                                      "ignore_rules": True}, TIMEOUT_BASE)
    assert not problem and lines, problem
    assert lines[0]["status"] == "error" and "KernelResourceError" in lines[0]["reason"], lines[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_input_errors_on_the_gpu():
    from flashcore.kernels import KernelInputError
    from flashcore.kernels.attention_gluon.launch import attention_gluon

    q = torch.zeros(1, 4, 64, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(KernelInputError):
        attention_gluon(q, q[:, :3], q[:, :3], {"BLOCK_M": 64, "BLOCK_N": 64})
    with pytest.raises(KernelInputError):
        attention_gluon(q, q, q, {"BLOCK_M": 64, "BLOCK_N": 64}, out=torch.empty_like(q[..., :32]))
