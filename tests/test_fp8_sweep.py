"""FP8 through the tuner: `sweep --dtype fp8 [--fp8-tol X]` and `bench --dtype fp8` in Triton's interpreter, the
FP8 gate chosen by the point's dtype, error budgets in the cache key, and (marked gpu) the compiled path."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from flashcore.autotune import PROFILES, Point, get_kernel, resolve_profile
from flashcore.autotune.evaluation.bench_fp8 import FP8_PROVIDERS
from flashcore.kernels.attention_fp8.trial import with_outliers
from flashcore.kernels.attention_fp8.gate import check_fp8, rel_l2
from flashcore.autotune.tuning.inputs import make_inputs
from flashcore.autotune.tuning.trial import prepare, run_trial
from flashcore.autotune.cli.app import app
from flashcore.cache import CacheStore, TableError, base_dtype, fp8_dtype, fp8_tol, parse_table
from flashcore.kernels import get_family
from flashcore.kernels.attention_fp8.reference import attention_fp8_emulated
from flashcore.kernels.attention_fp8.quant import Recipe
from flashcore.kernels.reference import attention_reference
from flashcore.kernels import load_space
from flashcore.kernels.attention_fp8.rules import QK_FP8_ERROR_FLOOR
from flashcore.search_spaces.rules import shared_bytes
from flashcore.autotune.tuning.options import SweepOptions

CPU = PROFILES["cpu"]
FP8 = get_family("attention_fp8")
runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_budget_labels_round_trip_and_malformed_ones_are_refused():
    assert fp8_dtype() == fp8_dtype(0.1) == "fp8" and fp8_dtype(0.03) == "fp8-tol0.03"
    assert fp8_tol("fp8") == 0.1 and fp8_tol("fp8-tol0.03") == 0.03 and fp8_tol("float16") is None
    assert base_dtype("fp8-tol0.03") == "fp8" and base_dtype("bfloat16") == "bfloat16"
    for bad in ("fp8-tol0.030", "fp8-tol0.1", "fp8-tol2", "fp8-tolx", "fp8-tol-0.5", "fp8x", "fp8-tolnan"):
        with pytest.raises(ValueError):
            fp8_tol(bad)
    for bad in (0, -0.1, 1.5, float("nan"), float("inf"), True):
        with pytest.raises(ValueError):
            fp8_dtype(bad)
    entry = {"gpu": "cpu-interpreter", "compute_capability": "cpu", "kernel": "attention_fp8", "dtype": "fp8-tol0.03",
             "causal": True, "batch": 1, "heads": 3, "seq_len": 77, "head_dim": 64, "config": {"BLOCK_M": 32},
             "median_us": 1.0, "p95_us": 1.0, "p99_us": 1.0, "tflops": 1.0, "rel_err": 0.02,
             "triton_version": "3.6.0", "torch_version": "2.13.0", "kernel_hash": "abcd",
             "created_at": "2026-01-01T00:00:00+00:00"}
    assert parse_table({"format_version": 1, "entries": [entry]})[0].key.dtype == "fp8-tol0.03"
    with pytest.raises(TableError, match=r"entries\[0\]\.dtype"):
        parse_table({"format_version": 1, "entries": [{**entry, "dtype": "fp8-tol0.030"}]})


def test_qk_fp8_error_floor_holds_on_the_sweep_inputs():
    # The rule fp8_recipe_within_budget prunes E4M3 Q·Kᵀ with E4M3 P·V under budgets below this floor: check it
    # for every such recipe of the space (Q/K scaled per head or block, K smoothed or not) and two tilings.
    recipes = [Recipe(q_scale=qs, k_scale=ks, smooth_k=sm) for qs in ("head", "block") for ks in ("head", "block")
               for sm in (False, True)]
    shapes = ((1, 3, 77, 64, False), (1, 3, 77, 64, True), (2, 1, 50, 32, True), (1, 2, 33, 80, False),
              (1, 1, 17, 16, False), (1, 2, 256, 128, True))
    for shape in shapes:
        q, k, v = make_inputs(Point(*shape), "cpu")
        ref = attention_reference(q, k, v, causal=shape[4])
        for recipe in recipes:
            for tiles in ((16, 16), (32, 32)):
                emu = attention_fp8_emulated(q, k, v, recipe, *tiles, causal=shape[4])
                assert rel_l2(emu, ref) > QK_FP8_ERROR_FLOOR, (shape, recipe.label, tiles)
        if shape[2] >= 50:  # and 16-bit Q·Kᵀ stays within the tight budget of the tests below
            assert rel_l2(attention_fp8_emulated(q, k, v, Recipe(qk_fp8=False), 32, 32, causal=shape[4]), ref) < 0.03


def test_space_and_default_follow_the_budget():
    h100 = PROFILES["h100"]
    space = load_space("attention_fp8")
    loose, tight = Point(8, 16, 1024, 64, True, "fp8"), Point(8, 16, 1024, 64, True, "fp8-tol0.03")
    labels = {Recipe.from_config(c).label for c in space.candidates(loose, h100)}
    assert "qk8.pv8.qH.kH.vH.p448" in labels and "qk16.pv8.vH.p448" in labels and "qk16.pv16" in labels
    assert not any(lb.startswith("qk8.pv16") for lb in labels)  # fp8_pv16_needs_qk16
    tight_configs = space.candidates(tight, h100)
    assert tight_configs and all(c["FP8_QK"] is False for c in tight_configs)
    assert all(Recipe.from_config(c).canonical() == Recipe.from_config(c) for c in tight_configs)
    default = space.default_for(tight, h100)  # the space default (E4M3 Q·Kᵀ) cannot meet 0.03: nearest valid
    assert default["FP8_QK"] is False and not space.violations(default, tight, h100)
    assert space.default_for(loose, h100)["FP8_QK"] is True
    base = dict(BLOCK_M=128, BLOCK_N=64, num_stages=3)
    assert shared_bytes({**base, "FP8_QK": False}, loose) > shared_bytes({**base, "FP8_QK": True}, loose)


def _ctx(point, seed=0):
    return prepare(point, FP8, CPU, load_space("attention_fp8", "cpu"), seed)


CONFIG = dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1, CAUSAL_SPLIT=True, **Recipe().to_config())


def test_fp8_points_get_the_fp8_gate_and_its_figures():
    ctx = _ctx(Point(1, 2, 45, 64, True, "fp8"))
    assert ctx.hooks is get_family("attention_fp8").trial_hooks() and ctx.q.dtype == torch.float16
    outcome = run_trial(ctx, CONFIG, rep_ms=1)
    assert outcome.status == "ok", outcome.reason
    assert 2e-3 < outcome.rel_err < 0.1  # far outside the fp16 gate (2e-3): the FP8 gate passed it
    extra = outcome.extra
    assert extra["fp8_tol"] == 0.1 and extra["recipe"] == "qk8.pv8.qH.kH.vH.p448"
    assert extra["fp8_cosine"] > 0.99 and 0 < extra["fp8_rmse_over_rms_v"] < 0.1 and extra["fp8_emulated_rel_err"] > 0
    tight = run_trial(_ctx(Point(1, 2, 45, 64, True, "fp8-tol0.03")), CONFIG, rep_ms=1, rules=False)
    assert tight.status == "gate_failed" and "budget 0.03" in tight.reason
    # the wrong gate is never used: a family is refused a dtype it does not take
    with pytest.raises(ValueError, match="takes dtype fp8"):
        _ctx(Point(1, 2, 45, 64, True, "float16"))
    with pytest.raises(ValueError, match="takes dtype"):
        prepare(Point(1, 2, 45, 64, True, "fp8"), get_family("attention_fwd"), CPU, load_space("attention_fwd", "cpu"))


@pytest.mark.parametrize("bug", ["noise", "row_never_written", "scales_not_applied"])
def test_planted_bad_fp8_results_fail_the_fp8_gate(bug, monkeypatch):
    import flashcore.kernels.attention_fp8.launch as lf8

    real = lf8.attention_fp8_quantized

    def planted(qi, config, **kw):
        out = real(qi, config, **kw)
        if bug == "noise":  # within the budget, but twice the recipe's own error: the kernel adds error
            gen = torch.Generator().manual_seed(1)
            out += (0.09 * out.float().pow(2).mean().sqrt() * torch.randn(out.shape, generator=gen)).to(out.dtype)
        elif bug == "row_never_written":
            out[0, 1, 30] = float("nan")
        else:
            out /= qi.v_scale[..., None].to(out.dtype)
        return out

    monkeypatch.setattr(lf8, "attention_fp8_quantized", planted)
    outcome = run_trial(_ctx(Point(1, 2, 45, 64, True, "fp8-tol0.2")), CONFIG, rep_ms=1)
    assert outcome.status == "gate_failed", outcome
    assert {"noise": "the kernel adds error", "row_never_written": "never written",
            "scales_not_applied": "FP8 budget"}[bug] in outcome.reason


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The smoke grid swept in FP8 under the default budget and under 0.03, into one cache."""
    db = tmp_path_factory.mktemp("fp8") / "cache.db"
    loose = invoke("sweep", "--gpu", "cpu", "--grid", "smoke", "--dtype", "fp8", "--trials", "2", "--db", db)
    assert loose.exit_code == 0, loose.output
    tight = invoke("sweep", "--gpu", "cpu", "--grid", "smoke", "--dtype", "fp8", "--fp8-tol", "0.03", "--trials",
                   "2", "--db", db)
    assert tight.exit_code == 0, tight.output
    return db, loose.output, tight.output


def test_cli_sweep_fp8_budgets_coexist_and_are_served_apart(swept):
    db, loose, tight = swept
    assert "candidates attention_fp8" in loose and "B1-H3-S77-D64-causal-fp8 " in loose
    assert "B2-H1-S50-D32-causal-fp8-tol0.03" in tight
    with CacheStore.open(db) as store:
        winners = {(w.key.dtype, w.key.causal, w.key.seq_len): w for w in store.winners(kernel="attention_fp8")}
        trials = store.trials()
    assert {d for d, _, _ in winners} == {"fp8", "fp8-tol0.03"}
    assert {(c, s) for d, c, s in winners if d == "fp8-tol0.03"} == {(False, 77), (True, 77), (True, 50)}
    for (dtype, causal, s), w in winners.items():
        assert w.rel_err <= fp8_tol(dtype) and w.key.kernel_hash == FP8.source_hash
        if dtype == "fp8-tol0.03":
            assert w.config["FP8_QK"] is False  # Q·Kᵀ in 16 bits: the only recipes within 0.03
    ok = [t for t in trials if t.status == "ok"]
    assert ok and all(t.extra.get("recipe") and t.extra.get("fp8_tol") in (0.1, 0.03) for t in ok)
    assert all("FP8 budget" in t.reason or "emulation" in t.reason for t in trials if t.status == "gate_failed")
    for dtype in ("fp8", "fp8-tol0.03"):
        kernel = get_kernel((1, 3, 77, 64), dtype, True, db=db, kernel="attention_fp8")
        assert kernel.source == "exact" and kernel.config == winners[(dtype, True, 77)].config
        q, k, v = make_inputs(Point(1, 3, 77, 64, True), "cpu")
        assert rel_l2(kernel(q, k, v), attention_reference(q, k, v, causal=True)) <= fp8_tol(dtype)
    unswept = get_kernel((1, 3, 77, 64), "fp8-tol0.02", True, db=db, kernel="attention_fp8")
    assert unswept.source == "default" and unswept.config["FP8_QK"] is False  # never a looser budget's winner


@pytest.mark.parametrize("args, message", [
    (["--dtype", "fp8", "--fp8-tol", "0"], "--fp8-tol must be a number in (0, 1]"),
    (["--dtype", "fp8", "--fp8-tol", "-0.1"], "--fp8-tol must be"),
    (["--dtype", "fp8", "--fp8-tol", "1.5"], "--fp8-tol must be"),
    (["--dtype", "fp8", "--fp8-tol", "nan"], "--fp8-tol must be"),
    (["--dtype", "fp8", "--fp8-tol", "abc"], "--fp8-tol must be"),
    (["--fp8-tol", "0.03"], "--fp8-tol is the error budget of --dtype fp8"),
    (["--dtype", "fp8-tol0.03", "--fp8-tol", "0.03"], "give it once"),
    (["--dtype", "fp8-tol0.030"], "malformed FP8 dtype"),
    (["--dtype", "float16", "--kernel", "attention_fp8"], "kernel attention_fp8 takes --dtype fp8"),
], ids=["zero", "negative", "above-1", "nan", "text", "without-fp8", "twice", "non-canonical", "fp8-kernel-fp16"])
@pytest.mark.parametrize("command", ["sweep", "bench"])
def test_bad_fp8_options_are_one_line_errors(command, args, message, tmp_path):
    if command == "bench" and "--kernel" in args:
        args = ["--dtype", "float16", "--fp16-db", str(tmp_path / "x.db")]
        message = "--fp16-db is the fp16 cache of --dtype fp8"
    result = runner.invoke(app, [command, "--gpu", "cpu", "--grid", "smoke", "--db", str(tmp_path / "c.db"), *args])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "c.db").exists()  # refused before anything ran


def test_cli_bench_fp8_in_the_interpreter(swept, tmp_path):
    db = swept[0]
    out, png = tmp_path / "bench-fp8.json", tmp_path / "bench-fp8.png"
    res = invoke("bench", "--gpu", "cpu", "--grid", "smoke", "--dtype", "fp8", "--fp8-tol", "0.03", "--db", db,
                 "--out", out, "--plot", png, "--rep-ms", "1")
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())  # strict JSON (no NaN)
    assert set(result) == {"provenance", "points", "summary"}
    prov = result["provenance"]
    assert (prov["kernel"], prov["dtype"], prov["fp8_tol"], prov["grid"]) == ("attention_fp8", "fp8-tol0.03", 0.03,
                                                                              "smoke")
    assert len(result["points"]) == 3
    for row in result["points"]:
        for p in FP8_PROVIDERS:
            assert all(f"{p}_{f}" in row for f in ("us", "p95_us", "tflops", "rel_err"))
        assert row["source"] == "exact" and row["recipe"] == "qk16.pv8.vH.p448" and row["fp8_tol"] == 0.03
        assert 0 < row["fp8_rel_err"] <= 0.03 and row["fp8_cosine"] > 0.999 and row["fp8_outlier_rel_err"] > 0
        assert row["fp8_e2e_rel_err"] == pytest.approx(row["fp8_rel_err"], rel=1e-3)
        assert row["tuned_rel_err"] <= 2e-3 and row["fp8_us"] > 0 and row["fp8_e2e_us"] > 0
        assert row["tuned_over_fp8"] == pytest.approx(row["tuned_us"] / row["fp8_us"])
        assert all(row[f"{b}_us"] is None and row["errors"][b] == "not available on cpu"
                   for b in ("flash", "cudnn", "efficient"))
        assert "fp8" not in row["errors"]
    assert result["summary"]["recipes"] == ["qk16.pv8.vH.p448"]
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "fp16 / fp8" in res.output and "geomean tuned fp16 / fp8" in res.output

    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("fp8_report", Path(__file__).parents[1] / "benchmarks/fp8_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    table = report.bench_table([str(out)])
    assert "| 1 | 3 | 77 | 64 | yes | exact | qk16.pv8.vH.p448 |" in table and "(budget 0.03)" in table


def test_with_outliers_plants_a_few_large_values():
    q, k, v = make_inputs(Point(2, 3, 40, 16), "cpu")
    qo, ko, vo = with_outliers(q, k, v, seed=0)
    for x, y in ((q, qo), (k, ko), (v, vo)):
        changed = (x != y).sum()
        assert 1 <= changed <= 8 and torch.allclose(y[x != y].float(), 100 * x[x != y].float(), rtol=1e-2)
    assert torch.equal(with_outliers(q, k, v, seed=0)[0], qo)


@pytest.mark.gpu
@pytest.mark.parametrize("tol", [0.1, pytest.param(0.03, marks=pytest.mark.slow)], ids=["0.1", "0.03"])
def test_gpu_fp8_sweep_serves_each_budget(tol, tmp_path):
    # Compiled: a real sweep of the FP8 family at one point per budget, its winner served and re-gated.
    from flashcore.autotune.tuning.sweep import tune_point

    profile = resolve_profile("auto")
    point = Point(2, 4, 1000, 128, True, fp8_dtype(tol))
    with CacheStore.open(tmp_path / "gpu.db") as store:
        res = tune_point(point, store, SweepOptions(profile=profile, trials=4, seed=0, rep_ms=10), kernel="attention_fp8")
    assert res.best is not None and res.best.rel_err <= tol and res.best.extra["recipe"]
    kernel = get_kernel((2, 4, 1000, 128), point.dtype, True, db=tmp_path / "gpu.db", kernel="attention_fp8")
    assert kernel.source == "exact" and kernel.config == res.best.config
    q, k, v = make_inputs(point, "cuda")
    recipe = Recipe.from_config(kernel.config)
    emu = attention_fp8_emulated(q, k, v, recipe, kernel.config["BLOCK_M"], kernel.config["BLOCK_N"], causal=True)
    verdict = check_fp8(kernel(q, k, v), attention_reference(q, k, v, causal=True), emu, tol)
    assert verdict.passed, verdict.reason


def test_bench_fp8_times_attention_fwd_where_a_backend_is_served(tmp_path):
    # The fp16 side ("tuned") is launched with attention_fwd: where get_kernel's fastest fp16 candidate is a
    # backend (config {}: the H200 tables serve cuDNN at many points; on a GPU a miss serves SDPA, also {}), the
    # bench must still take attention_fwd's tuned config, not give attention_fwd the backend's (the H200 failure
    # of test_gpu_bench_fp8_point: "BLOCK_M must be one of ...; got None", then tuned_rel_err None).
    import dataclasses

    from flashcore.autotune.evaluation.bench_fp8 import bench_fp8_point
    from flashcore.autotune.evaluation.pin import pin

    point = Point(1, 2, 45, 64, True, "fp8")
    fp16 = tmp_path / "fp16.db"
    pin(fp16, dataclasses.replace(point, dtype="float16"), "sdpa_cudnn")
    assert get_kernel((1, 2, 45, 64), torch.float16, True, db=fp16).kernel == "sdpa_cudnn"
    row = bench_fp8_point(point, profile=CPU, db=tmp_path / "fp8.db", fp16_db=fp16, rep_ms=1)
    assert "tuned" not in row["errors"], row["errors"]
    assert row["tuned_rel_err"] is not None and row["tuned_rel_err"] <= 2e-3, row
    assert row["tuned_source"] == "default" and row["tuned_config"]["BLOCK_M"], row["tuned_config"]
    assert row["tuned_over_fp8"] == pytest.approx(row["tuned_us"] / row["fp8_us"])


@pytest.mark.gpu
def test_gpu_bench_fp8_point(tmp_path):
    from flashcore.autotune.cli.backend import select_backend
    from flashcore.autotune.evaluation.bench_fp8 import bench_fp8_point

    profile = resolve_profile("auto")
    select_backend(profile)
    row = bench_fp8_point(Point(2, 8, 2048, 128, False, "fp8"), profile=profile, db=tmp_path / "c.db", rep_ms=10)
    # nothing tuned in c.db: the space's default, or the nearest point of a shipped FP8 table of this GPU (the
    # H100's; there is no H200 FP8 table); every assertion names the row, so a failure on the GPU says why
    errors = row["errors"]
    assert row["source"] in ("default", "nearest"), (row["source"], row["config"])
    assert row["recipe"] and "fp8" not in errors and "fp8_e2e" not in errors, (row["recipe"], errors)
    assert "tuned" not in errors, (row["tuned_source"], row["tuned_config"], errors["tuned"])
    assert row["fp8_us"] > 0 and row["fp8_rel_err"] <= 0.1, (row["fp8_us"], row["fp8_rel_err"])
    # quantization + kernel against the kernel alone: the end-to-end time is the larger (10% timing noise)
    assert row["fp8_e2e_us"] >= row["fp8_us"] * 0.9, (row["fp8_e2e_us"], row["fp8_us"])
    assert row["fp8_outlier_rel_err"] is not None and math.isfinite(row["fp8_outlier_rel_err"]), row
    assert row["tuned_rel_err"] is not None and row["tuned_rel_err"] <= 2e-3, (row["tuned_rel_err"], row)
    assert row["tuned_over_fp8"] == pytest.approx(row["tuned_us"] / row["fp8_us"])
    missing = [p for p in FP8_PROVIDERS if row[f"{p}_us"] is None and not errors.get(p)]
    assert not missing, (missing, errors)
