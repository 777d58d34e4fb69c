"""benchmarks/real_models.py end to end on tiny configs (the CPU's Triton interpreter, or the GPU where there is
one): every section of its JSON, failures and the budget recorded, and a teacher-forced comparison that flags an
implementation that is wrong."""

from __future__ import annotations

import importlib.util
import json
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
    for section in ("provenance", "transformers", "args", "models", "tolerance_rel_l2", "prefill", "teacher_forcing",
                    "generate", "skipped", "failures", "elapsed_s"):
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


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench().parse_args(["--models", "llama9"])
    with pytest.raises(SystemExit):
        bench().parse_args(["--device", "cpu"])  # the real widths need --tiny on a CPU
