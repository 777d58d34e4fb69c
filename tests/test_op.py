"""The drop-in op: same result as SDPA where supported, SDPA fallback elsewhere, strict mode, opcheck."""

import pytest
import torch
import torch.nn.functional as F

from flashcore import autotune
from flashcore.autotune import Point, check
from flashcore.autotune.tuning.inputs import make_inputs
from flashcore.kernels.reference import attention_reference

from _shapes import shape_id

SHAPES = [(1, 3, 77, 64, False), (2, 1, 50, 32, True)]


@pytest.mark.parametrize("shape", SHAPES, ids=[shape_id(*s) for s in SHAPES])
def test_matches_the_fp32_reference(shape):
    point = Point(*shape)
    q, k, v = make_inputs(point)
    out = autotune.attention(q, k, v, is_causal=point.causal)
    assert check(out, attention_reference(q, k, v, causal=point.causal), "float16").passed


def test_scale_is_honoured():
    q, k, v = make_inputs(Point(1, 2, 33, 64))
    out = autotune.attention(q, k, v, scale=0.05)
    assert check(out, attention_reference(q, k, v, sm_scale=0.05), "float16").passed


FALLBACKS = {
    "mask": dict(attn_mask=torch.ones(20, 20, dtype=torch.bool)),
    "dropout": dict(dropout_p=0.5),
    "fp32": dict(dtype=torch.float32),
    "head-dim-512": dict(d=512),
    "lower-right-more-queries-than-keys": dict(kv_len=7, lower_right=True),
    "needs-grad": dict(grad=True),
}


@pytest.mark.parametrize("name", list(FALLBACKS))
def test_unsupported_inputs_fall_back_to_sdpa_or_raise_in_strict_mode(name):
    kw = dict(FALLBACKS[name])
    d, dtype, kv_len, grad = kw.pop("d", 16), kw.pop("dtype", torch.float16), kw.pop("kv_len", 20), kw.pop("grad", False)
    if kw.pop("lower_right", False):  # rows 0..12 of 20 queries see none of 7 keys bottom-right: SDPA's NaN rows
        from torch.nn.attention.bias import causal_lower_right

        kw["attn_mask"] = causal_lower_right(20, kv_len)
    torch.manual_seed(0)
    q = torch.randn(1, 2, 20, d, dtype=dtype, requires_grad=grad)
    k, v = (torch.randn(1, 2, kv_len, d, dtype=dtype) for _ in range(2))
    if name == "dropout":
        torch.manual_seed(1)
    expected = F.scaled_dot_product_attention(q, k, v, **kw)
    if name == "dropout":
        torch.manual_seed(1)
    out = autotune.attention(q, k, v, **kw)
    torch.testing.assert_close(out, expected)
    with pytest.raises(autotune.UnsupportedAttention):
        autotune.attention(q, k, v, strict=True, **kw)


def test_registered_as_a_custom_op_that_passes_opcheck():
    q, k, v = make_inputs(Point(1, 2, 40, 32, True))
    autotune.attention(q, k, v)  # registers the op
    torch.library.opcheck(torch.ops.flashcore.attention.default, (q, k, v, True, None))
    torch.library.opcheck(torch.ops.flashcore.attention.default, (q, k, v, False, 0.2))


def test_fake_tensor_gives_shape_without_running():
    from torch._subclasses.fake_tensor import FakeTensorMode

    autotune.attention  # noqa: B018  (registers the op)
    with FakeTensorMode():
        q = torch.empty(2, 3, 1000, 64, dtype=torch.float16)
        out = torch.ops.flashcore.attention(q, q, q, False, None)
    assert out.shape == (2, 3, 1000, 64) and out.dtype == torch.float16


def test_works_inside_torch_compile_fullgraph():
    q, k, v = make_inputs(Point(1, 2, 40, 32, True))

    def layer(q, k, v):
        return autotune.attention(q * 1.0, k, v, is_causal=True) + 0.0

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), layer(q, k, v))
