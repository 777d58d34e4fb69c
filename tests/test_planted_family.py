"""A kernel family is one folder: a tiny planted family, written to a temporary folder (its JIT code, launcher,
space.toml, rules and declaration, nothing else), registers with one call and is swept and served on the CPU.

This is the recipe of kernels/README.md, end to end: nothing outside the folder names the family.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from flashcore.autotune import PROFILES, Point, SweepOptions, get_kernel, sweep
from flashcore.cache import CacheStore
from flashcore.kernels import families, get_family, load_space, register_folder, unregister
from flashcore.search_spaces import RULES as RULE_REGISTRY

NAME = "planted_attn"

FAMILY = f'''
from pathlib import Path

from flashcore.kernels import KernelFamily

FAMILY = KernelFamily(
    name="{NAME}",
    launcher="{NAME}.launch:attention",
    reference="reference:attention_reference",  # the one shared fp32 reference
    space="{NAME}",
    rules="{NAME}.rules",
    dtypes=("float16",),
    gqa=False,
    jit=(str(Path(__file__).with_name("kernel.py")) + ":attn",),
)
'''

KERNEL = '''
import triton
import triton.language as tl


@triton.jit
def attn(Q, K, V, Out, S, sm_scale, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, D)
    base = bh * S * D
    q = tl.load(Q + base + rows[:, None] * D + cols[None, :], mask=rows[:, None] < S, other=0.0)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start in range(0, S, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        k = tl.load(K + base + keys[:, None] * D + cols[None, :], mask=keys[:, None] < S, other=0.0)
        v = tl.load(V + base + keys[:, None] * D + cols[None, :], mask=keys[:, None] < S, other=0.0)
        s = tl.dot(q, tl.trans(k)) * sm_scale
        s = tl.where(keys[None, :] < S, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    tl.store(Out + base + rows[:, None] * D + cols[None, :], (acc / l[:, None]).to(Out.dtype.element_ty),
             mask=rows[:, None] < S)
'''

LAUNCH = '''
import math

import torch
import triton

from flashcore.kernels import KernelInputError

from .kernel import attn


def attention(q, k, v, config, *, causal=False, sm_scale=None, out=None):
    if causal:
        raise KernelInputError("the planted family computes full attention only")
    b, h, s, d = q.shape
    out = torch.empty_like(q) if out is None else out
    grid = (triton.cdiv(s, config["BLOCK_M"]), b * h)
    attn[grid](q.contiguous(), k.contiguous(), v.contiguous(), out, s, sm_scale or 1 / math.sqrt(d), D=d,
               BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"])
    return out
'''

RULES = '''
from flashcore.search_spaces import rule


@rule
def planted_blocks_within_sequence(config, point, profile):
    """A block over twice the padded sequence only computes padding."""
    if config["BLOCK_M"] > 2 * point.seq_len:
        return f"BLOCK_M={config['BLOCK_M']} exceeds the sequence"
    return None
'''

SPACE = '''
kernel = "planted_attn"
rules = ["planted_blocks_within_sequence"]

[params]
BLOCK_M = [64, 128]
BLOCK_N = [64]

[default]
BLOCK_M = 64
BLOCK_N = 64

# the interpreter's profile: small tiles
[profiles.cpu.params]
BLOCK_M = [16, 32]
BLOCK_N = [16]

[profiles.cpu.default]
BLOCK_M = 16
BLOCK_N = 16

# an override for one GPU profile only: h200 also tries BLOCK_N 128
[profiles.h200.params]
BLOCK_M = [64, 128]
BLOCK_N = [64, 128]
'''


@pytest.fixture
def planted(tmp_path):
    folder = tmp_path / NAME
    folder.mkdir()
    for name, text in {"__init__.py": "", "family.py": FAMILY, "kernel.py": KERNEL, "launch.py": LAUNCH,
                       "rules.py": RULES, "space.toml": SPACE}.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    rules, path = set(RULE_REGISTRY), list(sys.path)
    family = register_folder(folder)
    yield family
    unregister(NAME)  # and what registering it added: its rules, its folder's parent on the path, its modules
    for name in set(RULE_REGISTRY) - rules:
        del RULE_REGISTRY[name]
    sys.path[:] = path
    for module in [m for m in sys.modules if m == NAME or m.startswith(NAME + ".")]:
        del sys.modules[module]


def test_a_planted_family_registers_from_its_folder_and_is_swept_and_served(planted, tmp_path):
    assert get_family(NAME) is planted and planted in families()
    assert planted.folder == str(tmp_path / NAME) and len(planted.source_hash) == 16
    space = load_space(NAME, "cpu")
    assert space.rule_names == ("planted_blocks_within_sequence",) and space.param_values["BLOCK_M"] == (16, 32)

    point = Point(1, 2, 24, 16, False, "float16")
    db = tmp_path / "planted.db"
    with CacheStore.open(db) as store:
        (result,) = sweep([point], store, SweepOptions(profile=PROFILES["cpu"], trials=2, kernels=(NAME,),
                                                       isolate=False))
        assert result.kernel == NAME and result.best is not None, result
        assert result.trials and {t.status for t in result.trials} == {"ok"}

    served = get_kernel((1, 2, 24, 16), torch.float16, False, db=db, kernel=NAME)
    assert served.kernel == NAME and served.source == "exact"
    q, k, v = (torch.randn(1, 2, 24, 16, dtype=torch.float16) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert torch.allclose(served(q, k, v).float(), ref, atol=2e-3, rtol=1e-3)


def test_a_profile_override_applies_to_that_profile_only(planted):
    h200, h100 = load_space(NAME, "h200"), load_space(NAME, "h100")
    assert h200.param_values["BLOCK_N"] == (64, 128) and h100.param_values["BLOCK_N"] == (64,)
    assert dict(h200.default) == dict(h100.default) == {"BLOCK_M": 64, "BLOCK_N": 64}
