"""What a miss serves on a GPU (never something slower than SDPA), and model code that never breaks around it:
CPU tensors without the interpreter, softmax scales SDPA takes and our kernels do not.

The GPU side is played on the CPU with a GPU's name: get_kernel(gpu="NVIDIA H200") reads entries stamped with
that name (the H200 profile's rules, not the interpreter's) and, where nothing applies, serves "sdpa".
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from flashcore.autotune import PROFILES, Point, attention, get_kernel
from flashcore.autotune.core.toolchain import make_key, now_iso
from flashcore.cache import CacheStore, Entry
from flashcore.kernels import get_family
from flashcore.kernels import load_space

GPU = "NVIDIA H200 (test)"  # an H200 by its profile, but none of the shipped tables' entries
TUNED = Point(2, 8, 1024, 64, True)  # where the cache below was "tuned"


def entry(point: Point, kernel: str, median: float) -> Entry:
    family = get_family(kernel)
    config = {} if family.kind == "backend" else load_space(family.space).default_for(point, PROFILES["h200"])
    return Entry(make_key(point, family, GPU, "9.0"), config, median, median, median, 1.0, 1e-4, now_iso())


def cache(tmp_path, *entries: Entry):
    path = tmp_path / "c.db"
    with CacheStore.open(path) as store:
        for e in entries:
            store.put_winner(e)
    return path


def served(db, point: Point, **kw):
    return get_kernel((point.batch, point.heads, point.seq_len, point.head_dim), getattr(torch, point.dtype),
                      point.causal, gpu=GPU, db=db, kv_heads=point.kv_heads, kv_len=point.kv_len,
                      lower_right=point.lower_right, **kw)


CLOSE = Point(2, 8, 1500, 64, True)  # 1.5x the length: within reach of TUNED
FAR = Point(16, 8, 16384, 64, True)  # 16x the length and 8x the batch
OTHER_GROUP = Point(2, 8, 1024, 64, True, kv_heads=2)


@pytest.mark.parametrize("own_us, point, expected", [
    (90.0, TUNED, ("attention_fwd", "exact")),            # tuned here, and ahead of the backend
    (99.0, TUNED, ("sdpa_cudnn", "exact")),               # tuned here, but within the noise: the backend
    (90.0, CLOSE, ("attention_fwd", "nearest")),          # close, and 10% ahead of the backend there
    (99.0, CLOSE, ("sdpa_cudnn", "nearest")),             # close, but within the noise: the backend
    (90.0, FAR, ("sdpa", "default")),                     # far: neither ours nor a backend's choice travels
    (90.0, OTHER_GROUP, ("sdpa_cudnn", "nearest")),       # another heads-per-kv-head group
], ids=["exact", "exact-within-noise", "close-ahead", "close-within-noise", "far", "other-group"])
def test_own_configs_are_borrowed_only_close_by_and_where_they_won(tmp_path, own_us, point, expected):
    db = cache(tmp_path, entry(TUNED, "attention_fwd", own_us), entry(TUNED, "sdpa_cudnn", 100.0),
               entry(TUNED, "sdpa_flash", 130.0))
    k = served(db, point)
    assert (k.kernel, k.source) == expected


def test_a_point_nothing_covers_is_served_by_sdpa_itself(tmp_path):
    db = cache(tmp_path, entry(TUNED, "attention_fwd", 90.0))  # our kernel only, and far from FAR
    k = served(db, FAR)
    assert (k.kernel, k.source, k.config, k.entry) == ("sdpa", "default", {}, None)
    assert k.backend
    assert served(db, Point(2, 8, 1024, 128, True)).kernel == "sdpa"  # another head dim: nothing of its group
    decode = Point(1, 32, 1, 128, True, "bfloat16", kv_heads=8, kv_len=3000, lower_right=True)
    assert served(db, decode).kernel == "sdpa"  # a KV cache never borrows a prefill choice
    # asked for our kernels, the default config of one of them (decode: split to fill the GPU)
    own = served(db, decode, kernel="own")
    assert (own.kernel, own.source) == ("attention_kv", "default") and own.config["NUM_SPLITS"] > 1


def test_sdpa_serves_what_sdpa_computes():
    q, k, v = (torch.randn(3, 5, 37, 16, dtype=torch.float32) for _ in range(3))
    tuned = get_kernel(q.shape, torch.float16, True, gpu=GPU, db="/nonexistent/none.db")
    assert tuned.kernel == "sdpa"
    assert torch.equal(tuned(q, k, v, 0.3), F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3))


@pytest.mark.parametrize("scale", [0.0, -0.5, 1e-30, float("nan")], ids=["zero", "negative", "tiny", "nan"])
def test_scales_our_kernels_do_not_take_give_sdpas_answer(scale):
    q, k, v = (torch.randn(3, 5, 37, 16, dtype=torch.float16) for _ in range(3))
    k[:, :, 7] *= 8.0
    out = attention(q, k, v, is_causal=True, scale=scale)
    truth = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    torch.testing.assert_close(out, truth, rtol=0, atol=0, equal_nan=True)  # SDPA's answer, NaN where it has NaN
    assert not attention(q, k, v, is_causal=True, scale=0.3).isnan().any()


SCRIPT = r"""
import os, warnings
import torch, torch.nn.functional as F
warnings.simplefilter("error")
from flashcore.autotune import attention, get_kernel
q, k, v = (torch.randn(2, 3, 33, 16, dtype=torch.float16) for _ in range(3))
for kernel in (None, "own", "attention_kv"):
    tuned = get_kernel(q.shape, torch.float16, True, kernel=kernel)
    out = tuned(q, k, v)  # CPU tensors, no interpreter: SDPA computes them
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True)), kernel
assert "TRITON_INTERPRET" not in os.environ, "get_kernel set TRITON_INTERPRET"
assert torch.equal(attention(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True))
try:
    attention(q, k, v, is_causal=True, strict=True)
except ValueError as exc:
    print("strict:", exc)
else:
    raise AssertionError("strict=True served CPU tensors without the interpreter")
print("ok")
"""


def test_cpu_tensors_without_the_interpreter_fall_back_after_a_get_kernel_call(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    env["AUTOTUNE_DB"] = str(tmp_path / "none.db")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ok" in done.stdout and "interpreter" in done.stdout


def test_a_backend_that_refuses_the_inputs_leaves_them_to_sdpa_and_restores_the_switches():
    from flashcore.kernels.backends import BackendServer

    flags = ("flash", "mem_efficient", "math", "cudnn")
    state = lambda: {f: getattr(torch._C, f"_get_{f}_sdp_enabled")() for f in flags}  # noqa: E731
    before = state()
    q, k, v = (torch.randn(2, 4, 9, 16) for _ in range(3))
    out = BackendServer("cudnn", True)(q, k, v)  # cuDNN alone has no CPU kernel: SDPA's own choice then
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True)) and state() == before
    seen = {}
    math = BackendServer("math", False)
    math._pin._sdpa = lambda *a, **kw: seen.update(state()) or F.scaled_dot_product_attention(*a, **kw)
    math(q, k, v)
    assert seen == {f: f == "math" for f in flags} and state() == before


def test_where_sdpa_picks_the_backend_itself_the_switches_are_left_alone():
    from flashcore.kernels.backends import BackendServer

    q, k, v = (torch.randn(2, 4, 9, 16) for _ in range(3))
    picked = int(torch._fused_sdp_choice(q, k, v, None, 0.0, True, scale=None, enable_gqa=False))
    names = {0: "math", 1: "flash", 2: "mem_efficient", 3: "cudnn"}
    other = "math" if names[picked] != "math" else "flash"
    for flag, switched in ((names[picked], False), (other, True)):
        server = BackendServer(flag, True)
        touched = []
        server._pin._put = tuple((lambda on, f=f: touched.append((f, on)) or f(on)) for f in server._pin._put)
        out = server(q, k, v)
        assert bool(touched) == switched, flag
        if not switched:
            assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


DECODE = Point(1, 32, 1, 128, True, "bfloat16", kv_heads=8, kv_len=2300, lower_right=True)
DECODE_NEAR = Point(1, 32, 1, 128, True, "bfloat16", kv_heads=8, kv_len=3000, lower_right=True)


@pytest.mark.parametrize("own_us, cudnn_us, point, eager", [
    (8.0, 12.0, DECODE, "sdpa_cudnn"),          # 4 µs of device time saved: less than the host pays more
    (8.0, 40.0, DECODE, "attention_kv"),        # 32 µs saved: ours for eager callers too
    (8.0, 12.0, DECODE_NEAR, "sdpa_cudnn"),     # borrowed from the nearest point: its backend likewise
], ids=["host-bound", "device-bound", "nearest"])
def test_eager_decode_gets_the_backend_where_our_launch_costs_more_than_it_saves(tmp_path, own_us, cudnn_us,
                                                                                 point, eager):
    from flashcore.autotune.runtime.dispatch import _eager_choice

    db = cache(tmp_path, entry(DECODE, "attention_kv", own_us), entry(DECODE, "sdpa_cudnn", cudnn_us))
    tuned = served(db, point)
    assert tuned.kernel == "attention_kv"  # device time decides what get_kernel (and a compiled graph) serves
    chosen = _eager_choice(tuned, point.seq_len, point.kv_len)
    assert chosen.kernel == eager and chosen.source == tuned.source
    prefill = _eager_choice(tuned, 100, point.kv_len)  # not a decode-class call: device time alone
    assert prefill is tuned
