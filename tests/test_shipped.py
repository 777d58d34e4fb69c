"""The H100 tables shipped under cache/tables/: valid, served on a matching toolchain (Triton and the kernel's JIT
source; any torch build), round-trip exactly.

Both were tuned at f99307b, when a kernel's hash covered its whole files; they are served because the JIT source
those files held hashes, under today's scheme (kernels/_hash.py), to the current one (``legacy_hashes``)."""

import json
from importlib import resources

import pytest
from typer.testing import CliRunner

from flashcore.autotune.core import toolchain as _toolchain
from flashcore.autotune import get_kernel
from flashcore.autotune.cli.app import app
from flashcore.cache import parse_table
from flashcore.kernels import get_family

TABLE = "h100-float16.json"


@pytest.fixture(scope="module")
def table():
    return json.loads(resources.files("flashcore.cache").joinpath("tables", TABLE).read_text())


def test_shipped_table_is_valid_and_names_its_provenance(table):
    entries = parse_table(table)
    assert len(entries) >= 9
    assert table["provenance"]["gpu"].startswith("NVIDIA H100")
    assert {e.key.gpu for e in entries} == {table["provenance"]["gpu"]}


def test_shipped_table_matches_the_current_kernel_source(table):
    # A kernel edit makes every shipped winner stale (never served). Re-run the H100 sweep and re-export
    # (benchmarks/gpu_evidence.sh) when this fails.
    family = get_family("attention_fwd")
    hashes = {e["kernel_hash"] for e in table["entries"]}
    assert hashes == {"a5c27be1af7945f5"} and all(family.hash_matches(h) for h in hashes), \
        "cache/tables/h100-float16.json is stale"
    # the equivalence holds only while the JIT source is the one the old hash named
    assert dict(family.legacy_hashes)["a5c27be1af7945f5"] == family.source_hash


def test_served_as_shipped_on_the_toolchain_it_was_tuned_with(table, monkeypatch, tmp_path):
    prov = table["provenance"]
    monkeypatch.setattr(_toolchain, "versions", lambda: (prov["triton"], "2.99.0+another-build"))  # any torch
    first = table["entries"][0]
    shape = (first["batch"], first["heads"], first["seq_len"], first["head_dim"])
    k = get_kernel(shape, causal=first["causal"], gpu="h100", db=tmp_path / "user.db")
    assert k.source == "shipped" and k.config == first["config"]
    assert get_kernel((4, 8, 200, 64), gpu="h100", db=tmp_path / "user.db").source == "nearest"  # close by


def test_not_served_with_another_triton(table, monkeypatch, tmp_path):
    first = table["entries"][0]
    shape = (first["batch"], first["heads"], first["seq_len"], first["head_dim"])
    monkeypatch.setattr(_toolchain, "versions", lambda: ("3.5.1", table["provenance"]["torch"]))
    assert get_kernel(shape, causal=first["causal"], gpu="h100", db=tmp_path / "u.db").source == "default"


def test_import_then_export_round_trips_exactly(table, tmp_path):
    src = tmp_path / "shipped.json"
    src.write_text(json.dumps(table))
    runner = CliRunner()
    assert runner.invoke(app, ["import", str(src), "--db", str(tmp_path / "team.db")]).exit_code == 0
    out = tmp_path / "again.json"
    assert runner.invoke(app, ["export", "--db", str(tmp_path / "team.db"), "-o", str(out)]).exit_code == 0
    key = lambda e: (e["causal"], e["head_dim"], e["seq_len"], e["batch"], e["heads"])  # noqa: E731
    again = json.loads(out.read_text())
    assert table["format_version"] == 1 and again["format_version"] == 2
    for e in again["entries"]:  # format 2 names what format 1 left implicit: one kv head per head, one length
        assert (e.pop("kv_heads"), e.pop("kv_len"), e.pop("lower_right")) == (e["heads"], e["seq_len"], False)
    assert sorted(again["entries"], key=key) == sorted(table["entries"], key=key)


@pytest.fixture(scope="module")
def fp8_table():
    return json.loads(resources.files("flashcore.cache").joinpath("tables", "h100-fp8.json").read_text())


def test_shipped_fp8_table_is_current_and_holds_both_budgets(fp8_table):
    entries = parse_table(fp8_table)
    assert {e.key.kernel for e in entries} == {"attention_fp8"}
    family = get_family("attention_fp8")
    assert all(family.hash_matches(e.key.kernel_hash) for e in entries), "cache/tables/h100-fp8.json is stale"
    assert {e.key.dtype for e in entries} == {"fp8", "fp8-tol0.03"}


def test_shipped_fp8_winner_is_served_for_its_budget_only(fp8_table, monkeypatch, tmp_path):
    prov = fp8_table["provenance"]
    monkeypatch.setattr(_toolchain, "versions", lambda: (prov["triton"], prov["torch"]))
    tight = next(e for e in fp8_table["entries"] if e["dtype"] == "fp8-tol0.03")
    shape = (tight["batch"], tight["heads"], tight["seq_len"], tight["head_dim"])
    got = get_kernel(shape, dtype="fp8-tol0.03", kernel="attention_fp8", causal=tight["causal"], gpu="h100",
                     db=tmp_path / "user.db")
    assert got.source == "shipped" and got.config == tight["config"]
    loose = get_kernel(shape, dtype="fp8", kernel="attention_fp8", causal=tight["causal"], gpu="h100",
                       db=tmp_path / "user.db")
    assert loose.source == "shipped" and loose.config != tight["config"]  # the 0.1 winner, not the 0.03 one


@pytest.mark.parametrize("name", ["h200-float16.json", "h200-bfloat16.json"])
def test_shipped_h200_tables_are_valid_and_current(name):
    table = json.loads(resources.files("flashcore.cache").joinpath("tables", name).read_text())
    entries = parse_table(table)
    assert table["provenance"]["gpu"] == "NVIDIA H200" and {e.key.gpu for e in entries} == {"NVIDIA H200"}
    ours = [e for e in entries if get_family(e.key.kernel).kind != "backend"]
    assert ours and {e.key.kernel for e in ours} <= {"attention_fwd", "attention_kv", "attention_gluon"}
    stale = [e.key for e in ours if not get_family(e.key.kernel).hash_matches(e.key.kernel_hash,
                                                                                 e.key.kv_heads != e.key.heads)]
    assert not stale, f"{name} is stale at {len(stale)} entries (re-sweep on the H200)"
    # backends are candidates too: served only on the torch and cuDNN builds they were measured with
    assert any(e.key.kernel.startswith("sdpa_") for e in entries)
