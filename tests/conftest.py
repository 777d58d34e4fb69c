"""Test setup: Triton's interpreter without a GPU (set before any kernel is decorated), and the gpu marker."""

import os
import sys
from pathlib import Path

import pytest
import torch

# The repository root is the package flashcore (pyproject.toml's package-dir mapping), which tests import through
# the install. `python -m pytest` puts the working directory, the root, on sys.path, where its folders would also
# import as top-level packages of their own (transformers probes for a package called "kernels" and would import
# ours a second time): take it off. tests/test_layout.py checks that no bare folder name gets imported.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != ROOT]

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own default cache file, a fresh dispatcher memory and a fixed torch seed."""
    monkeypatch.setenv("AUTOTUNE_DB", str(tmp_path / "default-cache.db"))
    torch.manual_seed(0)  # fixed seeds: a test draws the same numbers on every run
    from flashcore.autotune import clear_cache

    clear_cache()
    yield
    clear_cache()
