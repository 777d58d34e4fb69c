"""What get_kernel serves for attention_kv: the launcher's kernels and arguments, at a fraction of its host time.

A decode step calls attention once per layer with a KV cache one token longer than the last step's: the lengths
and strides change every call, so nothing per-shape can be remembered. :class:`KvServer` builds the same
arguments ``launch._kernel_args`` builds (with the tensors' own strides: the kernel only reads, through each
stride, the dimensions it indexes) and launches ``attn_kv_fwd`` (and ``attn_kv_combine`` for split-KV) through
``kernels._fastrun.FastRunner``, which repeats Triton's launch for any arguments of one specialization class.
The split-KV workspace is one fp32 allocation (partial outputs, then partial LSEs). The output is the
launcher's, bit for bit (tests/test_attention_kv_fast.py compares them).

``server(q, k, v, sm_scale)`` checks its inputs as the launcher does; ``server.run`` is the same without the
checks, for callers that validated the call already (the drop-in op).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .._common import LOG2E, interpreting
from .._fastrun import FastRunner
from . import launch as _launch
from .kernel import attn_kv_combine, attn_kv_fwd

_FWD = FastRunner(attn_kv_fwd)
_COMBINE = FastRunner(attn_kv_combine)
_F32 = torch.float32


class KvServer:
    """``server(q, k, v, sm_scale=None) -> out`` for one attention_kv config, causal flag and alignment."""

    __slots__ = ("config", "causal", "lower_right", "_block_m", "_splits", "_pack", "_metas")

    def __init__(self, config: Mapping[str, Any], causal: bool = False, lower_right: bool = False):
        _launch.check_config(config)
        if lower_right and not causal:
            raise _launch.KernelInputError("lower_right only applies with causal=True")
        self.config = dict(config)
        self.causal = bool(causal)
        self.lower_right = bool(lower_right)
        self._block_m = config["BLOCK_M"]
        self._splits = config.get("NUM_SPLITS", 1)
        self._pack = bool(config.get("PACK_GQA", False))
        self._metas: dict[tuple, tuple[dict, int | None]] = {}

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None):
        _launch.check_inputs(q, k, v, self.causal, self.lower_right)
        return self.run(q, k, v, sm_scale)

    def _meta(self, d: int, pack: bool, dtype: torch.dtype) -> tuple[dict, int | None]:
        key = (d, pack, dtype)
        found = self._metas.get(key)
        if found is None:
            config = self.config
            meta = dict(HEAD_DIM=d, BLOCK_D=_launch._block_d(d), BLOCK_M=self._block_m, BLOCK_N=config["BLOCK_N"],
                        CAUSAL=self.causal, PACK_GQA=pack, SPLIT=self._splits > 1,
                        UPCAST_DOT=interpreting() and dtype == torch.bfloat16,
                        num_warps=config["num_warps"], num_stages=config["num_stages"])
            found = self._metas[key] = (meta, _FWD.meta_id(meta))
        return found

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None) -> torch.Tensor:
        """The launch for inputs already checked (``launch.check_inputs``)."""
        b, hq, lq, d = q.shape
        hkv, s = k.shape[1], k.shape[2]
        g = hq // hkv
        pack = self._pack and g > 1
        n_rows = lq * g if pack else lq
        h_grid = hkv if pack else hq
        ns = self._splits
        scale = (1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)) * LOG2E
        out = torch.empty((b, hq, lq, d), dtype=q.dtype, device=q.device)
        o_strides = (hq * lq * d, lq * d, d, 1)
        if ns > 1:
            rows = b * hq * lq
            work = torch.empty(ns * rows * (d + 1), dtype=_F32, device=q.device)
            po, plse = work, work[ns * rows * d:]
            p_strides = (rows * d, hq * lq * d, lq * d, d, 1, rows, hq * lq, lq, 1)
        else:
            po = plse = out
            p_strides = (0, 0, 0, 0, 0, 0, 0, 0, 0)
        diag = s - lq if self.lower_right else 0
        meta, meta_id = self._meta(d, pack, q.dtype)
        _FWD((-(-n_rows // self._block_m), b * h_grid, ns),
             (q, k, v, out, po, plse, scale, *q.stride(), *k.stride(), *v.stride(), *o_strides, *p_strides,
              h_grid, g, s, diag, n_rows), meta, meta_id)
        if ns > 1:
            _combine(po, plse, out, ns, b, hq, lq, d, p_strides, o_strides)
        return out

    def __repr__(self) -> str:
        return f"KvServer(config={self.config!r}, causal={self.causal}, lower_right={self.lower_right})"


_COMBINE_METAS: dict[int, tuple[dict, int | None]] = {}


def _combine(po, plse, out, ns, b, hq, lq, d, p_strides, o_strides) -> None:
    found = _COMBINE_METAS.get(d)
    if found is None:
        meta = dict(HEAD_DIM=d, BLOCK_D=_launch._block_d(d), BLOCK_R=_launch.COMBINE_ROWS,
                    num_warps=_launch.COMBINE_WARPS, num_stages=1)
        found = _COMBINE_METAS[d] = (meta, _COMBINE.meta_id(meta))
    meta, meta_id = found
    _COMBINE((-(-(hq * lq) // _launch.COMBINE_ROWS), b), (po, plse, out, ns, hq, lq, *p_strides, *o_strides),
             meta, meta_id)


def runners() -> tuple[FastRunner, FastRunner]:
    """The forward and combine runners (their hit / miss / fallback counts), for tests and benchmarks."""
    return _FWD, _COMBINE
