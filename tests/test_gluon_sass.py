"""Issue 22 on the CPU: in the SASS of the shipped OVERLAP winners of the Gluon kernel, the softmax's exponentials
must be issued while the P·V wgmma is in flight (between its partial and its full wait; the counting rule is
kernels/attention_gluon/sass.py's module doc).

The shipped winners are read from cache/tables/h200-*.json (one compile per distinct dtype, causal, head dim and
config). Each compile runs in compile.py's helper process (tests/conftest.py sets TRITON_INTERPRET=1) and takes
2-5 s on one core, so the sweep is marked slow; it is skipped where Triton has no bundled cuobjdump.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from flashcore.kernels.attention_gluon.sass import cuobjdump, overlap_report, sass_overlap, sass_summary

KERNEL = "attention_gluon"


def _shipped_overlap_winners():
    seen = {}
    tables = resources.files("flashcore.cache").joinpath("tables")
    for name in sorted(t.name for t in tables.iterdir() if t.name.startswith("h200-") and t.name.endswith(".json")):
        for e in json.loads(tables.joinpath(name).read_text())["entries"]:
            if e["kernel"] != KERNEL or not e["config"].get("OVERLAP"):
                continue
            key = (e["dtype"], bool(e["causal"]), int(e["head_dim"]), json.dumps(e["config"], sort_keys=True))
            seen.setdefault(key, (e["batch"], e["heads"], e["seq_len"], e["head_dim"], e["kv_heads"]))
    return [(*key, shape) for key, shape in seen.items()]


WINNERS = _shipped_overlap_winners()


def _id(w):
    dtype, causal, d, config, _ = w
    c = json.loads(config)
    flags = "".join(f"-{k.lower()}" for k in ("PINGPONG", "PERSISTENT") if c.get(k))
    return (f"{'bf16' if dtype == 'bfloat16' else 'fp16'}-{'causal' if causal else 'full'}-D{d}-M{c['BLOCK_M']}"
            f"N{c['BLOCK_N']}C{c['CONSUMERS']}S{c['STAGES']}{flags}")


def test_there_are_shipped_overlap_winners():
    assert len(WINNERS) >= 8, WINNERS


@pytest.mark.slow
@pytest.mark.skipif(cuobjdump() is None, reason="Triton has no bundled cuobjdump here")
@pytest.mark.xfail(strict=True, reason="today's kernel: ptxas hoists the wait")
@pytest.mark.parametrize("winner", WINNERS, ids=[_id(w) for w in WINNERS])
def test_shipped_overlap_winners_issue_exponentials_under_pv(winner):
    dtype, causal, d, config, (b, h, s, _, kv) = winner
    report = overlap_report((b, h, s, d), getattr(torch, dtype), causal, json.loads(config), kv_heads=kv)
    consumers = json.loads(config)["CONSUMERS"]
    assert len(report["loops"]) == consumers, report  # one overlapped loop per consumer partition
    assert report["spills"] == 0 and report["local_memory_instructions"] == 0, report
    assert report["overlap"] > 0, report


# --- the counting rule on hand-written SASS ------------------------------------------------------------------

def _sass(*lines):
    return "\n".join(f"        /*{16 * i:04x}*/                   {text} ;   /* 0x0 */" for i, text in enumerate(lines))


def test_counting_takes_the_fewest_exponentials_over_both_arms():
    sass = _sass(
        "MOV R1, R2",                            # 0x00: loop top
        "HGMMA.64x128x16.F32 R24, gdesc[UR4], RZ, !UPT, gsb0",
        "WARPGROUP.DEPBAR.LE gsb0, 0x1",         # 0x20
        "@!P0 BRA 0x60",                          # 0x30: masked arm below, unmasked at 0x60
        "MUFU.EX2 R3, R3",                        # 0x40
        "BRA 0x80",                               # 0x50
        "MUFU.EX2 R3, R3",                        # 0x60
        "MUFU.EX2 R4, R4",                        # 0x70
        "@!P1 BRA 0xf00",                         # 0x80: a slow path that leaves the range
        "WARPGROUP.DEPBAR.LE gsb0, 0x0",         # 0x90
        "MUFU.EX2 R5, R5",                        # 0xa0: after the wait: not overlapped
        "@P2 BRA 0x0",                            # 0xb0: closes the loop
        "EXIT",
    )
    (loop,) = sass_overlap(sass)
    assert (loop["partial_wait"], loop["full_wait"]) == (0x20, 0x90)
    assert (loop["ex2_overlapped"], loop["ex2_overlapped_max"]) == (1, 2)
    assert (loop["ex2_in_loop"], loop["ex2_outside"], loop["loop_instructions"]) == (4, 1, 12)
    assert loop["iteration_instructions"] == [10, 10]  # either arm: 4 + 2 + 3 + the closing branch
    summary = sass_summary(sass)
    assert summary["overlap"] == 1 and summary["instructions"] == 13 and summary["local_memory_instructions"] == 0


def test_the_hoisted_wait_counts_zero_and_no_overlap_means_no_loops():
    hoisted = _sass("WARPGROUP.DEPBAR.LE gsb0, 0x1", "WARPGROUP.DEPBAR.LE gsb0, 0x0", "MUFU.EX2 R3, R3",
                    "@P0 BRA 0x0", "EXIT")
    assert sass_summary(hoisted)["overlap"] == 0
    plain = _sass("WARPGROUP.DEPBAR.LE gsb0, 0x0", "MUFU.EX2 R3, R3", "STL [R1], R3", "EXIT")
    assert sass_summary(plain) == {"loops": [], "overlap": 0, "instructions": 4, "local_memory_instructions": 1}
