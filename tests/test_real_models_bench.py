"""benchmarks/real_models.py end to end on tiny configs (the CPU's Triton interpreter, or the GPU where there is
one): every section of its JSON, failures and the budget recorded, and a teacher-forced comparison that flags an
implementation that is wrong; the per-round ratios, their noise verdict (unit-tested on synthetic ratios) and the
A/A control."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from flashcore.autotune.integrations import transformers as fct  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--tiny", "--layers", "1", "--iters", "1", "--warmup", "0", "--gen-runs", "1"]
STATIC = "mask: static cache (hides the cache slots not yet written)"
SOFTCAP = "softcap (transformers' eager attention)"


def bench():
    spec = importlib.util.spec_from_file_location("real_models_bench", ROOT / "benchmarks" / "real_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _registered_again():
    yield
    fct.register()  # a test may have registered another function under the name
    fct.reset_stats()


def run(tmp_path, *argv) -> dict:
    out = tmp_path / "real_models.json"
    assert bench().main([*FAST, "--out", str(out), *argv]) == 0
    return json.loads(out.read_text())


def test_a_tiny_run_writes_every_section(tmp_path, capsys):
    result = run(tmp_path, "--models", "llama3-8b,gemma2-9b", "--dtypes", "bf16", "--shapes", "1x16",
                 "--gen-shapes", "1x8+3")
    for section in ("provenance", "transformers", "args", "models", "tolerance_rel_l2", "verdict_rule", "prefill",
                    "teacher_forcing", "generate", "verdicts", "skipped", "failures", "elapsed_s"):
        assert section in result, section
    assert {"torch", "triton", "commit", "date"} <= set(result["provenance"])
    assert result["failures"] == [] and result["skipped"] == []
    assert result["models"]["gemma2-9b"]["reference"] == "eager" and result["models"]["llama3-8b"]["reference"] == "sdpa"
    by = {(r["kind"], r["model"], r.get("mode")): r for k in ("prefill", "teacher_forcing", "generate") for r in result[k]}
    assert len(by) == 2 * (1 + 1 + 2) and all(r["status"] == "ok" for r in by.values())

    llama = by[("prefill", "llama3-8b", None)]
    assert llama["tokens_per_s"]["tuned"] > 0 and llama["logits"]["passed"], llama
    assert llama["served"]["share"] == 1.0 and llama["served"]["unmasked"] == {"calls": 1, "served": 1, "share": 1.0}
    gemma = by[("prefill", "gemma2-9b", None)]  # softcapping: every call goes to the model's eager attention
    assert gemma["served"]["fallback_reasons"] == {SOFTCAP: 1} and gemma["logits"]["rel_l2"] == 0.0

    forced = by[("teacher_forcing", "llama3-8b", None)]
    assert forced["passed"] and len(forced["rel_l2_per_step"]) == 3, forced
    assert forced["served"]["by_phase"]["decode"]["calls"] == 2, forced  # two one-token steps, one layer

    static = by[("generate", "llama3-8b", "static")]
    assert static["compiled"] and static["tokens_per_s"]["reference"] > 0, static
    assert static["served"]["fallback_reasons"] == {STATIC: 2}, static  # decoding over the static cache's slots
    assert static["served"]["by_phase"]["prefill"]["share"] == 1.0, static
    dynamic = by[("generate", "llama3-8b", "dynamic")]
    assert dynamic["served"]["unmasked"]["calls"] == 3, dynamic  # the prefill and two steps, none masked
    assert "llama3-8b bf16 generate static 1x8+3" in capsys.readouterr().out  # the table printed last

    for row in (llama, gemma, static, dynamic):  # one round each (FAST): a ratio, no spread, no verdict
        ratio = row["ratio"]
        assert {"median", "min", "max", "q1", "q3", "rounds", "per_round", "verdict"} <= set(ratio), row
        assert ratio["rounds"] == len(ratio["per_round"]) == 1 and row["speedup"] == ratio["median"] > 0, row
        assert row["verdict"] == ratio["verdict"] == "too few rounds" and row["speedup_of_medians"] > 0, row
        assert "control" not in row, row  # off by default
    assert result["verdicts"]["prefill"]["too few rounds"] == result["verdicts"]["prefill"]["measured"] == 2
    assert result["verdicts"]["generate"]["measured"] == 4 and result["verdicts"]["control"]["measured"] == 0


@pytest.mark.parametrize("ratios, expected", [
    ([0.97, 0.98, 0.99, 0.95, 0.999], "slower"),        # every round below 1
    ([0.79, 0.95, 1.01, 0.9, 0.8], "within noise"),     # one round above 1: the spread reaches 1
    ([1.02, 1.05, 1.001, 1.1, 1.3], "faster"),          # every round above 1
    ([0.9, 1.1, 1.0, 1.0, 1.05], "within noise"),
    ([1.0, 1.0, 1.0], "within noise"),                  # a tie is not a difference
    ([0.5, 0.6], "too few rounds"),                     # under MIN_ROUNDS: no verdict from two rounds
    ([], "too few rounds"),
])
def test_the_verdict_reads_the_spread_of_the_per_round_ratios(ratios, expected):
    gen = bench().gen
    assert gen.verdict(ratios) == expected
    if ratios:
        stats = gen.ratio_stats(ratios)
        assert stats["verdict"] == expected and stats["rounds"] == len(ratios) == len(stats["per_round"])
        assert stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]
        assert (stats["min"], stats["max"]) == (round(min(ratios), 4), round(max(ratios), 4))


def test_the_median_ratio_is_not_the_ratio_of_medians():
    gen = bench().gen
    stats = gen.ratio_stats([0.8, 0.9, 1.2, 1.3, 1.25])  # a median of 1.2, yet two rounds well below 1
    assert stats["median"] == 1.2 and stats["verdict"] == "within noise" and stats["q1"] == 0.9


def test_each_round_alternates_which_implementation_goes_first():
    gen = bench().gen
    calls = []

    def time_one(impl):
        calls.append(impl)
        return {"tuned": 1.0, "sdpa": 2.0}[impl]

    got = [gen.paired_round(i, ("tuned", "sdpa"), time_one) for i in range(4)]
    assert got == [(1.0, 2.0)] * 4  # the times come back in the order of the implementations named
    assert calls == ["tuned", "sdpa", "sdpa", "tuned", "tuned", "sdpa", "sdpa", "tuned"]


def test_rounds_verdicts_and_the_a_a_control(tmp_path, capsys):
    result = run(tmp_path, "--models", "llama3-8b", "--dtypes", "fp16", "--kinds", "prefill,generate",
                 "--modes", "dynamic", "--shapes", "1x16", "--gen-shapes", "1x8+2", "--iters", "4",
                 "--gen-runs", "3", "--control")
    (pre,), (row,) = result["prefill"], result["generate"]
    assert pre["status"] == row["status"] == "ok", (pre, row)
    assert pre["ratio"]["rounds"] == 4 and pre["tuned_ms"]["n"] == 4 and "control" not in pre
    assert row["ratio"]["rounds"] == 3 and row["seconds"]["tuned"]["n"] == row["seconds"]["reference"]["n"] == 3
    for r in (pre, row, row["control"]):
        ratio = r["ratio"]
        assert r["verdict"] == ratio["verdict"] == bench().gen.verdict(ratio["per_round"]), r
        assert r["verdict"] in ("faster", "slower", "within noise"), r
        assert r["speedup"] == ratio["median"] and ratio["min"] <= ratio["median"] <= ratio["max"], r
    control = row["control"]
    assert control["implementation"] == "sdpa" and control["seconds"]["a"]["n"] == control["seconds"]["b"]["n"] == 3
    assert set(control["tokens_per_s"]) == {"a", "b"} and min(control["tokens_per_s"].values()) > 0
    v = result["verdicts"]
    assert v["prefill"]["measured"] == v["generate"]["measured"] == v["control"]["measured"] == 1
    for kind in ("prefill", "generate", "control"):
        assert sum(v[kind][k] for k in ("faster", "slower", "within noise", "too few rounds")) == 1, v
    assert v["control"]["min_ratio"] == control["ratio"]["min"] and v["control"]["max_ratio"] == control["ratio"]["max"]
    assert v["generate"]["slower_cases"] == (["llama3-8b fp16 generate dynamic 1x8+2"] if row["verdict"] == "slower"
                                             else [])
    out = capsys.readouterr().out
    assert "A/A control: sdpa vs itself" in out and "ratio min-max" in out and "generate: 1 " in out


def test_the_defaults_are_five_generate_rounds_without_a_control():
    args = bench().parse_args([])
    assert args.gen_runs == 5 and not args.control
    assert bench().parse_args(["--control", "--gen-runs", "7"]).control


def test_the_teacher_forced_comparison_flags_a_wrong_implementation(tmp_path, monkeypatch):
    real = fct.attention_forward

    def off_by_a_little(module, query, key, value, attention_mask, *args, **kwargs):
        out, weights = real(module, query, key, value, attention_mask, *args, **kwargs)
        return out * 1.02, weights

    monkeypatch.setattr(fct, "attention_forward", off_by_a_little)  # register() registers the module's function
    result = run(tmp_path, "--models", "llama3-8b", "--dtypes", "fp16", "--kinds", "teacher_forcing",
                 "--gen-shapes", "1x8+3")
    (row,) = result["teacher_forcing"]
    assert row["status"] == "ok" and not row["passed"], row
    assert row["max_rel_l2"] > row["tolerance_rel_l2"] == result["tolerance_rel_l2"]["fp16"]
    assert "NO" in bench().table(result)


def test_a_failure_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    module = bench()
    build = module.gen.build

    def build_or_fail(torch, transformers, config, *args):
        if isinstance(config, transformers.GPT2Config):
            raise RuntimeError("CUDA out of memory (simulated)")
        return build(torch, transformers, config, *args)

    monkeypatch.setattr(module.gen, "build", build_or_fail)
    out = tmp_path / "real_models.json"
    assert module.main([*FAST, "--out", str(out), "--models", "gpt2,llama3-8b", "--dtypes", "fp16",
                        "--shapes", "1x16", "--kinds", "prefill"]) == 0
    result = json.loads(out.read_text())
    assert [r["status"] for r in result["prefill"]] == ["failed", "ok"]
    assert result["failures"] == ["gpt2 fp16 prefill 1x16: build: RuntimeError: CUDA out of memory (simulated)"]


def test_cases_past_the_budget_are_recorded_as_skipped(tmp_path):
    result = run(tmp_path, "--models", "gpt2", "--dtypes", "fp16", "--shapes", "1x16", "--gen-shapes", "1x8+2",
                 "--budget-s", "0")
    rows = result["prefill"] + result["teacher_forcing"] + result["generate"]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"skipped"}
    assert len(result["skipped"]) == 4 and result["failures"] == []


def test_the_budget_skips_only_the_cases_that_would_start_after_it(tmp_path, monkeypatch):
    module = bench()
    clock = {"now": 0.0}
    real_run_case = module.run_case

    def run_case_taking_100_s(*args):  # every case that runs takes 100 s on the benchmark's clock
        clock["now"] += 100.0
        return real_run_case(*args)

    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    monkeypatch.setattr(module, "run_case", run_case_taking_100_s)
    out = tmp_path / "real_models.json"
    assert module.main([*FAST, "--out", str(out), "--models", "llama3-8b", "--dtypes", "fp16", "--kinds", "generate",
                        "--gen-shapes", "1x8+2,2x8+2", "--control", "--budget-s", "150"]) == 0
    result = json.loads(out.read_text())
    # starts at 0 and at 100 s (not past 150 s): run; at 200 and 300 s: skipped, each recorded
    assert [r["status"] for r in result["generate"]] == ["ok", "ok", "skipped", "skipped"], result["generate"]
    assert result["skipped"] == ["llama3-8b fp16 generate dynamic 2x8+2", "llama3-8b fp16 generate static 2x8+2"]
    assert result["verdicts"]["generate"]["measured"] == result["verdicts"]["control"]["measured"] == 2


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench().parse_args(["--models", "llama9"])
    with pytest.raises(SystemExit):
        bench().parse_args(["--device", "cpu"])  # the real widths need --tiny on a CPU
    with pytest.raises(SystemExit):
        bench().parse_args(["--gen-runs", "0"])
