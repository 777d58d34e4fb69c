"""`autotune bench`: our own best kernel and the served candidate against PyTorch SDPA, on the CPU through Triton's
interpreter.

Without a GPU, tests/conftest.py turns the interpreter on before anything imports the kernels. The GPU test
runs its bench in a subprocess with the interpreter off.
"""

from __future__ import annotations

import json
import os
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flashcore.autotune import PROFILES, Point
from flashcore.autotune.evaluation.bench import (NOT_ON_CPU, PROVIDERS, SDPA_BACKENDS, _bench_sdpa, bench_point, plot_bench,
                             run_bench, summarize)

from _shapes import fwd_config

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POINT_FIELDS = ("batch", "heads", "kv_heads", "seq_len", "kv_len", "head_dim", "causal", "dtype", "own_kernel",
                "own_config", "own_source", "served_kernel", "served_config", "served_source", "errors",
                "best_sdpa_over_own", "best_sdpa_over_served", "cudnn_over_own", "flash_over_own")
FIGURES = ("us", "p95_us", "tflops", "rel_err")


def _check_point_shape(row: dict) -> None:
    for name in POINT_FIELDS:
        assert name in row, name
    for p in PROVIDERS:
        for f in FIGURES:
            assert f"{p}_{f}" in row, f"{p}_{f}"


@pytest.fixture(scope="module")
def cpu_result(tmp_path_factory) -> dict:
    db = tmp_path_factory.mktemp("bench") / "cache.db"
    points = [Point(1, 3, 77, 64, True), Point(2, 1, 50, 32, False)]
    seen = []
    result = run_bench(points, PROFILES["cpu"], db=db, rep_ms=1, seed=0, on_point=lambda p, r: seen.append(p),
                       grid="tiny")
    assert seen == points
    return result


def test_run_bench_cpu_json_shape(cpu_result):
    result = json.loads(json.dumps(cpu_result, allow_nan=False))  # strict JSON round trip
    assert set(result) == {"provenance", "points", "summary", "complete"} and result["complete"] is True
    prov = result["provenance"]
    for name in ("gpu", "compute_capability", "torch", "triton", "commit", "date", "grid", "dtype", "rep_ms"):
        assert name in prov, name
    assert prov["timing"] == "cpu-wall (meaningless for speed)"
    assert (prov["gpu"], prov["grid"], prov["dtype"], prov["rep_ms"]) == ("cpu-interpreter", "tiny", "float16", 1)
    assert [(r["batch"], r["heads"], r["seq_len"], r["head_dim"], r["causal"]) for r in result["points"]] == \
        [(1, 3, 77, 64, True), (2, 1, 50, 32, False)]
    for row in result["points"]:
        _check_point_shape(row)
        assert row["dtype"] == "float16"
        assert row["own_source"] == row["served_source"] == "default"  # the tmp cache is empty
        assert row["own_kernel"] == row["served_kernel"] == "attention_fwd"
        assert {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"} <= set(row["own_config"])
        assert row["own_rel_err"] is not None and row["own_rel_err"] <= 2e-3
        assert row["own_tflops"] > 0 and row["own_us"] > 0 and row["own_p95_us"] >= row["own_us"]
        assert all(row[f"served_{f}"] == row[f"own_{f}"] for f in FIGURES)  # one candidate: measured once
        for b in SDPA_BACKENDS:
            assert all(row[f"{b}_{f}"] is None for f in FIGURES)
            assert row["errors"][b] == NOT_ON_CPU
        assert "own" not in row["errors"] and "served" not in row["errors"]
        assert row["best_sdpa_over_own"] is None and row["flash_over_own"] is None
    s = result["summary"]
    assert s["geomean_best_sdpa_over_own"] is None and s["geomean_flash_over_own"] is None
    assert s["max_own_rel_err"] == max(r["own_rel_err"] for r in result["points"])
    assert s["served_by_backend"] == 0


def test_bench_point_reports_exact_source(tmp_path):
    from flashcore.cache import CacheStore, Entry
    from flashcore.kernels import get_family

    from flashcore.autotune.core.toolchain import make_key

    point = Point(2, 1, 50, 32, True)
    config = fwd_config(BLOCK_M=16, BLOCK_N=16, num_warps=2, CAUSAL_SPLIT=False)
    key = make_key(point, get_family("attention_fwd"), "cpu-interpreter", "cpu")
    db = tmp_path / "cache.db"
    with CacheStore.open(db) as store:
        store.put_winner(Entry(key=key, config=config, median_us=1.0, p95_us=1.0, p99_us=1.0, tflops=1.0,
                               rel_err=1e-4, created_at="2025-01-01T00:00:00+00:00"))
    row = bench_point(point, profile=PROFILES["cpu"], db=db, rep_ms=1)
    assert row["own_source"] == "exact" and row["own_config"] == config and row["served_config"] == config
    assert row["own_rel_err"] <= 2e-3


def test_sdpa_refusal_is_recorded_not_raised():
    # On the CPU no cuDNN kernel exists: SDPA raises RuntimeError when forced to it, as on a GPU that refuses.
    point = Point(1, 2, 16, 64, True)
    q = torch.randn(1, 2, 16, 64, dtype=torch.float16)
    row = {f"cudnn_{f}": None for f in FIGURES}
    errors: dict[str, str] = {}
    _bench_sdpa(row, errors, "cudnn", point, q, q, q, q.float(), rep_ms=1)
    assert all(v is None for v in row.values())
    assert errors["cudnn"]


def _row(best, flash, err=1e-4, served=None) -> dict:
    return {"best_sdpa_over_own": best, "flash_over_own": flash, "own_rel_err": err,
            "best_sdpa_over_served": served, "served_rel_err": err, "served_kernel": "attention_fwd"}


def test_summarize_geometric_means_skip_nulls():
    s = summarize([_row(2.0, 1.0, served=2.0), _row(8.0, None, 3e-4, served=8.0), _row(None, 4.0, None),
                   _row(None, None)])
    assert math.isclose(s["geomean_best_sdpa_over_own"], 4.0)  # sqrt(2 * 8)
    assert math.isclose(s["geomean_flash_over_own"], 2.0)  # sqrt(1 * 4)
    assert (s["n_best_sdpa_over_own"], s["n_flash_over_own"], s["points"]) == (2, 2, 4)
    assert s["min_best_sdpa_over_own"] == 2.0 and s["min_best_sdpa_over_served"] == 2.0
    assert s["max_own_rel_err"] == 3e-4 and s["served_by_backend"] == 0
    empty = summarize([_row(None, None, None)])
    assert empty["geomean_best_sdpa_over_own"] is None and empty["max_own_rel_err"] is None


def test_plot_writes_png(tmp_path):
    rows = []
    for i, s in enumerate((128, 512, 4096)):
        row = {"label": f"B1-H8-S{s}-D64-full-float16"}
        for j, p in enumerate(PROVIDERS):
            row[f"{p}_tflops"] = None if (i == 0 and p == "cudnn") else 10.0 * (i + 1) * (j + 1)
        rows.append(row)
    result = {"provenance": {"gpu": "NVIDIA H100 80GB HBM3", "date": "2025-01-01T00:00:00+00:00",
                             "dtype": "float16", "grid": "test"}, "points": rows}
    path = tmp_path / "bench.png"
    plot_bench(result, path)
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_cli_bench_cpu_smoke(tmp_path):
    from flashcore.autotune.cli.app import app

    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    res = CliRunner().invoke(app, ["bench", "--gpu", "cpu", "--grid", "smoke", "--db", str(tmp_path / "c.db"),
                                   "--out", str(out), "--plot", str(png), "--rep-ms", "1"])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert len(result["points"]) == 3 and result["provenance"]["grid"] == "smoke"
    assert all(r["own_rel_err"] <= 2e-3 for r in result["points"])
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cli_bench_unknown_grid_is_one_line_error(tmp_path):
    from flashcore.autotune.cli.app import app

    res = CliRunner().invoke(app, ["bench", "--gpu", "cpu", "--grid", "nope", "--db", str(tmp_path / "c.db")])
    assert res.exit_code == 1
    assert "unknown grid" in res.output


_GPU_SCRIPT = textwrap.dedent("""
    import json, sys
    from flashcore.autotune import PROFILES, Point, resolve_profile
    from flashcore.autotune.cli.backend import select_backend
    from flashcore.autotune.evaluation.bench import bench_point
    profile = resolve_profile("auto")
    select_backend(profile)
    row = bench_point(Point(2, 8, 1024, 64, True), profile=profile, db=sys.argv[1], rep_ms=20)
    print(json.dumps(row))
""")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_point_on_gpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _GPU_SCRIPT, str(tmp_path / "c.db")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    _check_point_shape(row)
    # our kernel and every SDPA backend run this point on an H100/H200: each must have figures and no error
    for p in PROVIDERS:
        assert p not in row["errors"], (p, row["errors"])
        assert all(row[f"{p}_{f}"] is not None for f in FIGURES), p
        assert row[f"{p}_tflops"] > 0 and row[f"{p}_rel_err"] <= 2e-3, (p, row[f"{p}_rel_err"])
    assert math.isclose(row["flash_over_own"], row["flash_us"] / row["own_us"])
    assert math.isclose(row["best_sdpa_over_own"], min(row[f"{b}_us"] for b in SDPA_BACKENDS) / row["own_us"])
