"""attention_kv's served path (kernels/attention_kv/fastlaunch.py: KvServer, kernels/_fastrun.py) against the
launcher and the fp32 reference, in Triton's interpreter: odd lengths, groups 1/4/7, splits, both alignments,
outputs and workspaces poisoned with NaN. (The GPU side, the repeated launch itself, is in tests/test_gpu_serving.py.)
"""

from __future__ import annotations

import pytest
import torch

from flashcore.autotune import check
from flashcore.kernels import KernelInputError
from flashcore.kernels._fastrun import arg_class
from flashcore.kernels.attention_kv import fastlaunch
from flashcore.kernels.attention_kv.fastlaunch import KvServer
from flashcore.kernels.attention_kv.launch import attention_kv

from test_attention_kv import MASKS, make_kv_inputs, sdpa_truth

CASES = [  # (B, Hq, Hkv, L, S, D, mask, splits, pack)
    (1, 4, 1, 1, 1, 32, "causal_lr", 1, True),       # one key
    (2, 4, 1, 1, 3, 32, "causal_lr", 2, True),       # more splits than key blocks: empty splits
    (1, 7, 1, 3, 41, 32, "causal_lr", 3, True),      # group 7, a split count that is no power of two
    (3, 4, 4, 1, 77, 64, "full", 4, False),          # group 1, batch 3
    (1, 8, 2, 5, 70, 32, "causal_tl", 2, False),     # top-left: rows see few keys
    (1, 4, 1, 16, 4097, 16, "causal_lr", 8, True),   # a long odd cache
]


@pytest.fixture(autouse=True)
def _poisoned(monkeypatch):
    """Every tensor the server allocates (output, split workspace) starts as NaN: an element it never writes,
    or a partial it never fills, reaches the output as NaN and fails the check."""
    real_empty = torch.empty

    class Poisoned:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def empty(*args, **kwargs):
            return real_empty(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(fastlaunch, "torch", Poisoned())


def config(splits: int, pack: bool) -> dict:
    return dict(BLOCK_M=16, BLOCK_N=16, num_warps=2, num_stages=1, NUM_SPLITS=splits, PACK_GQA=pack)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-H{c[1]}kv{c[2]}-L{c[3]}-S{c[4]}-D{c[5]}-{c[6]}"
                                                      f"-ns{c[7]}{'-pack' if c[8] else ''}")
def test_the_server_is_the_launcher_and_the_reference(case):
    b, hq, hkv, lq, s, d, mask, splits, pack = case
    causal, lower_right = MASKS[mask]
    q, k, v = make_kv_inputs(b, hq, hkv, lq, s, d)
    server = KvServer(config(splits, pack), causal, lower_right)
    out = server(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    assert torch.equal(out, attention_kv(q, k, v, config(splits, pack), causal=causal, lower_right=lower_right))
    assert check(out, sdpa_truth(q, k, v, mask), "float16").passed


def test_strided_inputs_and_a_scale():
    """A cache viewed out of a larger buffer (transposed heads, an offset) is read through its own strides."""
    q, k, v = make_kv_inputs(2, 6, 2, 1, 45, 32)
    big_k = torch.zeros(2, 45, 2, 40, dtype=k.dtype)
    big_k[..., 3:35] = k.transpose(1, 2)
    k_view = big_k[..., 3:35].transpose(1, 2)
    assert not k_view.is_contiguous()
    out = KvServer(config(2, True), True, True)(q, k_view, v, 0.3)
    assert check(out, sdpa_truth(q, k, v, "causal_lr", sm_scale=0.3), "float16").passed


def test_a_planted_bug_in_the_split_workspace_is_caught(monkeypatch):
    """The poisoned workspace is what the check sees: combine reading one partial short leaves NaN."""
    q, k, v = make_kv_inputs(1, 4, 1, 1, 70, 32)
    real = fastlaunch._combine

    def short(po, plse, out, ns, *rest):
        return real(po, plse, out, ns - 1, *rest) if ns > 1 else None

    monkeypatch.setattr(fastlaunch, "_combine", short)
    out = KvServer(config(4, True), True, True)(q, k, v)
    assert not check(out, sdpa_truth(q, k, v, "causal_lr"), "float16").passed


def test_the_server_checks_its_inputs_and_run_does_not():
    server = KvServer(config(1, False), False)
    q, k, v = make_kv_inputs(1, 4, 2, 1, 20, 32)
    with pytest.raises(KernelInputError):
        server(q, k[:, :, :, :16], v)
    with pytest.raises(KernelInputError):
        KvServer(config(1, False), False, lower_right=True)


def test_arg_class_follows_triton_specialization():
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    values = [0, 1, 2, 15, 16, 17, 48, -16, -5, (1 << 31) - 16, 1 << 31, (1 << 31) + 5, 1 << 40, True, False, 0.5]
    t = torch.empty(64, dtype=torch.float16)
    values += [t, t[1:], t[8:], t.float()]
    triton_class = {}
    for value in values:
        ours = arg_class(value)
        theirs = native_specialize_impl(BaseBackend, value, False, True, True)
        triton_class.setdefault(ours, set()).add(theirs)
    # one class of ours never holds two of Triton's: equal keys compile to the same kernel
    assert all(len(theirs) == 1 for theirs in triton_class.values()), triton_class
