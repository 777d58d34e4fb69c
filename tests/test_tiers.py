"""The GPU test tiers (tests/_tiers.py): `-m "gpu and not slow"` keeps a sample of every GPU test file (each
kernel family, the gate, the served path, a sweep), `-m gpu` all of them; a sample's id that names no case fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from _tiers import tiered

ROOT = Path(__file__).resolve().parents[1]


def test_tiered_marks_all_but_the_sample_slow():
    params = tiered([(1, "a"), (2, "b"), (3, "c")], ["one", "two", "three"], fast=["two"], unpack=True)
    assert [p.id for p in params] == ["one", "two", "three"]
    assert [p.values for p in params] == [(1, "a"), (2, "b"), (3, "c")]
    assert [[m.name for m in p.marks] for p in params] == [["slow"], [], ["slow"]]
    assert tiered([(1, 2)], ["x"], fast=[])[0].values == ((1, 2),)  # not unpacked: one argument
    with pytest.raises(ValueError, match="name no case"):
        tiered([1, 2], ["one", "two"], fast=["three"])


GPU_FILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if re.search(r"^(pytestmark = |@)pytest\.mark\.gpu\b", p.read_text(encoding="utf-8"), re.M))


def _collected() -> tuple[Counter, Counter]:
    """Per GPU test file, how many tests `-m gpu` and `-m "gpu and not slow"` select (one collection)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p",
                           "_tiers", "-m", "gpu", *GPU_FILES], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    tiers = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("TIER ")]
    every = Counter(node.split("::")[0] for _, node in tiers)
    return every, Counter(node.split("::")[0] for tier, node in tiers if tier == "fast")


def test_the_fast_tier_samples_every_gpu_file():
    every, fast = _collected()
    assert set(every) == set(GPU_FILES) and len(GPU_FILES) >= 11, (sorted(every), GPU_FILES)
    assert set(fast) == set(every), sorted(set(every) - set(fast))  # no GPU file left out of the fast tier
    for name in ("tests/test_gpu.py", "tests/test_attention_kv_gpu.py", "tests/test_gluon_gpu.py",
                 "tests/test_fp8_kernel.py", "tests/test_gpu_serving.py", "tests/test_fp8_sweep.py"):
        assert 0 < fast[name] < every[name], (name, fast[name], every[name])  # a sample, the rest slow
    # a budget for one device call: at most half the GPU tests, the costly half (long sweeps, loops) left out
    assert sum(fast.values()) <= 0.5 * sum(every.values()), (sum(fast.values()), sum(every.values()))
