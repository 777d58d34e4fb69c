"""get_kernel: exact, nearest, default; stale entries never served; no tuning machinery at run time."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from flashcore import autotune
from flashcore.autotune import Point, check, get_kernel
from flashcore.autotune.tuning.inputs import make_inputs
from flashcore.autotune.core.profiles import CPU_GPU_NAME
from flashcore.autotune.core.toolchain import make_key, now_iso
from flashcore.cache import CacheStore, Entry
from flashcore.kernels import get_family
from flashcore.kernels.reference import attention_reference

from _shapes import fwd_config

FAMILY = get_family("attention_fwd")
ROOT = Path(__file__).resolve().parents[1]


def entry(s, b=1, h=2, d=64, causal=False, block_m=16, gpu=CPU_GPU_NAME, **key_changes):
    key = replace(make_key(Point(b, h, s, d, causal), FAMILY, gpu, "cpu"), **key_changes)
    config = fwd_config(BLOCK_M=block_m, BLOCK_N=16, num_warps=2, CAUSAL_SPLIT=False)
    return Entry(key, config, 10.0, 11.0, 12.0, 1.0, 1e-4, now_iso())


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "c.db"
    with CacheStore.open(path) as store:
        store.put_winner(entry(64, block_m=16))
        store.put_winner(entry(512, block_m=64))
        store.put_winner(entry(64, causal=True, block_m=32))
        store.put_winner(entry(128, block_m=32, gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0"))
    return path


def test_exact_hit(db):
    k = get_kernel((1, 2, 64, 64), db=db)
    assert k.source == "exact" and k.config["BLOCK_M"] == 16 and k.entry.key.seq_len == 64


def test_nearest_picks_the_closest_tuned_point_of_the_same_kind(db):
    assert get_kernel((1, 2, 100, 64), db=db).config["BLOCK_M"] == 16      # S 100 is closer to 64 than 512
    assert get_kernel((1, 2, 400, 64), db=db).config["BLOCK_M"] == 64
    k = get_kernel((1, 2, 100, 64), causal=True, db=db)                     # only one causal entry
    assert k.source == "nearest" and k.config["BLOCK_M"] == 32
    # our own config is borrowed only close by; asked for by name (or "own") it is borrowed from any distance
    assert get_kernel((4, 8, 300, 64), causal=True, db=db).source == "default"
    far = get_kernel((4, 8, 300, 64), causal=True, db=db, kernel="own")
    assert far.source == "nearest" and far.config["BLOCK_M"] == 32


def test_the_other_16_bit_dtype_is_borrowed_after_the_own_one(db):
    k = get_kernel((1, 2, 64, 64), db=db, dtype=torch.bfloat16)
    assert k.source == "nearest" and k.entry.key.dtype == "float16" and k.config["BLOCK_M"] == 16


def test_default_when_nothing_of_the_same_kind_is_tuned(db):
    k = get_kernel((1, 2, 64, 128), db=db)
    assert k.source == "default" and k.entry is None


@pytest.mark.parametrize("change", [{"triton_version": "0.0.1"}, {"kernel_hash": "0123456789abcdef"}],
                         ids=["triton", "kernel-source"])
def test_stale_entries_are_never_served(tmp_path, change):
    path = tmp_path / "stale.db"
    with CacheStore.open(path) as store:
        store.put_winner(entry(64, **change))
    assert get_kernel((1, 2, 64, 64), db=path).source == "default"


def test_gpu_profile_name_and_exact_device_name(db):
    assert get_kernel((1, 2, 128, 64), gpu="h100", db=db).source == "exact"
    assert get_kernel((1, 2, 128, 64), gpu="NVIDIA H100 80GB HBM3", db=db).source == "exact"
    h200 = get_kernel((8, 8, 128, 64), gpu="h200", db=db)  # not in this cache: the shipped H200 table
    assert h200.source == "shipped" and h200.entry.key.gpu == "NVIDIA H200"
    near = get_kernel((8, 8, 160, 64), gpu="h200", db=db)  # close to a shipped point of our kernel
    assert near.source == "nearest" and near.entry.key.gpu == "NVIDIA H200"
    assert get_kernel((1, 2, 64, 64), gpu="cpu", db=db).source == "exact"


def test_after_the_first_call_it_is_a_dictionary_lookup(db):
    first = get_kernel((1, 2, 64, 64), db=db)
    db.unlink()  # the file is not read again
    assert get_kernel((1, 2, 64, 64), db=db) is first


def test_missing_and_corrupt_cache_files_serve_the_default(tmp_path):
    assert get_kernel((1, 2, 64, 64), db=tmp_path / "none.db").source == "default"
    assert not (tmp_path / "none.db").exists()  # run time never creates files
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.warns(RuntimeWarning, match="ignoring the tuning cache"):
        assert get_kernel((1, 2, 64, 64), db=bad).source == "default"
    assert bad.read_bytes() == b"this is not sqlite" * 100


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_served_kernels_compute_attention(db, causal):
    point = Point(1, 2, 70, 64, causal)
    q, k, v = make_inputs(point)
    kernel = get_kernel((1, 2, 70, 64), causal=causal, db=db)
    assert check(kernel(q, k, v), attention_reference(q, k, v, causal=causal), "float16").passed


def test_bad_shape_is_a_value_error():
    with pytest.raises(ValueError, match="shape"):
        get_kernel((1, 2, 64))


def test_run_time_imports_no_tuning_machinery(tmp_path):
    code = ("import sys; from flashcore import autotune; k = autotune.get_kernel((1, 2, 64, 64)); "
            "bad = [m for m in ('optuna', 'typer', 'flashcore.autotune.tuning', 'flashcore.autotune.cli') "
            "if m in sys.modules]; "
            "assert not bad, bad; print(k.source)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1",
           "AUTOTUNE_DB": str(tmp_path / "x.db"), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "default"


def test_sweep_is_available_lazily():
    assert callable(autotune.sweep) and callable(autotune.tune_point)
    with pytest.raises(AttributeError):
        autotune.nope  # noqa: B018


def test_shipped_tables_come_after_the_users_cache(db, monkeypatch):
    from flashcore.autotune.runtime import index as _dispatch
    from flashcore.cache import write_json

    shipped = [entry(64, block_m=64), entry(256, block_m=32)]
    monkeypatch.setattr(_dispatch, "shipped_tables", lambda: [("t.json", write_json(shipped, None))])
    assert get_kernel((1, 2, 64, 64), db=db).source == "exact"          # the user's own winner first
    k = get_kernel((1, 2, 256, 64), db=db)
    assert k.source == "shipped" and k.config["BLOCK_M"] == 32
    assert get_kernel((1, 2, 256, 64), db=db.parent / "empty.db").source == "shipped"


def test_a_broken_shipped_table_is_ignored_with_a_warning(monkeypatch, tmp_path):
    from flashcore.autotune.runtime import index as _dispatch

    monkeypatch.setattr(_dispatch, "shipped_tables", lambda: [("bad.json", '{"format_version": 9}')])
    with pytest.warns(RuntimeWarning, match="bad.json"):
        assert get_kernel((1, 2, 64, 64), db=tmp_path / "x.db").source == "default"


def test_misses_are_recorded_once_per_shape(db):
    from flashcore.autotune.runtime.misses import read_misses

    for _ in range(3):
        get_kernel((1, 2, 100, 64), db=db)        # nearest
    get_kernel((1, 2, 64, 128), db=db)            # default
    get_kernel((1, 2, 64, 64), db=db)             # exact: not a miss
    misses = read_misses(db)
    assert sorted((m["seq_len"], m["head_dim"], n) for m, n in misses) == [(64, 128, 1), (100, 64, 1)]
