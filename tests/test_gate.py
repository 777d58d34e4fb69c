"""The gate: it passes a correct kernel and PyTorch's own fp16 attention, and rejects every planted bug."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from flashcore.autotune import PROFILES, Point, TOLERANCES, check
from flashcore.autotune.tuning.inputs import make_inputs
from flashcore.autotune.tuning.trial import prepare, run_trial
from flashcore.kernels.reference import attention_reference
from flashcore.kernels import load_space

from planted import BUGS, make_launcher

CONFIG = dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1, CAUSAL_SPLIT=False)


@dataclass(frozen=True)
class PlantedFamily:
    """A kernel family whose launcher is a planted-bug kernel (same contract as kernels.KernelFamily)."""

    bug: str
    name: str = "planted"

    def launch(self):
        return make_launcher(self.bug)

    def reference_fn(self):
        return attention_reference


def _trial(bug, point):
    space = load_space("attention_fwd", "cpu")
    ctx = prepare(point, PlantedFamily(bug), PROFILES["cpu"], space)
    return run_trial(ctx, CONFIG)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_planted_kernel_without_bug_passes(causal):
    outcome = _trial("none", Point(1, 3, 77, 64, causal))
    assert outcome.status == "ok", outcome.reason


# A causal mask hides the unmasked tail (padded keys lie above every real row), so each bug is planted where it
# shows; the ones that show in both modes are tried in both.
PLANTED = [("causal_mask_excludes_diagonal", True), ("unmasked_tail", False), ("no_running_max", False),
           ("no_running_max", True), ("block_loop_off_by_one", False), ("block_loop_off_by_one", True),
           ("last_row_never_written", False), ("last_row_never_written", True)]


@pytest.mark.parametrize("bug, causal", PLANTED, ids=[f"{b}-{'causal' if c else 'full'}" for b, c in PLANTED])
def test_gate_rejects_planted_bug(bug, causal):
    assert {b for b, _ in PLANTED} == set(BUGS) - {"none"}
    outcome = _trial(bug, Point(1, 3, 77, 64, causal=causal))
    assert outcome.status == "gate_failed", f"{bug} passed the gate: {outcome}"
    assert outcome.reason
    assert outcome.median_us is None  # a failed trial is never timed, so it can never win


@pytest.mark.parametrize("dtype", list(TOLERANCES))
def test_gate_accepts_pytorch_attention_in_low_precision(dtype):
    # Calibration: the tolerance must not be tighter than what PyTorch's own low-precision attention achieves.
    q, k, v = make_inputs(Point(2, 3, 77, 64, True, dtype), "cpu")
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert check(out, attention_reference(q, k, v, causal=True), dtype).passed


def test_gate_reports_unwritten_and_nan():
    ref = torch.zeros(1, 1, 4, 8)
    out = ref.clone()
    out[0, 0, 3, 5] = float("nan")
    r = check(out, ref, "float16")
    assert not r.passed and "1 of 32" in r.reason


def test_gate_rejects_a_single_wrong_element():
    q, k, v = make_inputs(Point(1, 2, 33, 64), "cpu")
    ref = attention_reference(q, k, v)
    out = ref.half()
    assert check(out, ref, "float16").passed
    out[0, 1, 17, 3] += 0.01
    r = check(out, ref, "float16")
    assert not r.passed and "(0, 1, 17, 3)" in r.reason


def test_gate_rejects_small_spread_error_by_relative_l2():
    ref = torch.ones(1, 1, 64, 64)
    out = ref * (1 + 2.5e-3)  # inside atol + rtol·|ref| = 3e-3 everywhere, but 2.5e-3 relative L2
    r = check(out, ref, "float16")
    assert not r.passed and "relative L2" in r.reason


def test_gate_rejects_wrong_shape():
    assert not check(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 5), "float16").passed
