"""What get_kernel serves for attention_kv: the launcher's kernels and arguments, at a fraction of its host time.

A decode step calls attention once per layer with a KV cache one token longer than the last step's: the cache's
length and strides change every call, the query's shape and strides do not. :class:`KvServer` builds the same
arguments ``launch._kernel_args`` builds (with the tensors' own strides: the kernel only reads, through each
stride, the dimensions it indexes) and launches ``attn_kv_fwd`` (and ``attn_kv_combine`` for split-KV) through
``kernels.fastrun.FastRunner``, which repeats Triton's launch for any arguments of one specialization class.
The output is the launcher's, bit for bit (tests/test_attention_kv_fast.py compares them).

Per call, the server keys the launch itself (``FastRunner.launch``): what depends on the query's shape and
strides, the kv head count and the dtype (grids, the output's and workspace's strides and sizes, the classes of
those ints, the keywords) is a :class:`_Plan`, made once per such layout (``MAX_PLANS`` per server); what is left
per call is the kv strides and length (``int_classes``), the dtypes of k and v, and the 16-byte alignment of the
six pointers, which the launches take as ints. The split-KV workspace is one fp32 allocation per call (partial
outputs, then partial LSEs), freed when the call returns: nothing is shared between calls. Where the fast path is
off (Triton's interpreter, a launch hook, a stride past 32 bits) the same arguments go through ``FastRunner``'s
generic path.

``server(q, k, v, sm_scale)`` checks its inputs as the launcher does; ``server.run`` is the same without the
checks, for callers that validated the call already (the drop-in op).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from .._common import LOG2E, interpreting
from ..fastrun import FastRunner, arg_class, int_classes, launch_context
from . import launch as _launch
from .kernel import attn_kv_combine, attn_kv_fwd

_FWD = FastRunner(attn_kv_fwd)
_COMBINE = FastRunner(attn_kv_combine)
_F32 = torch.float32
MAX_PLANS = 256
_CLASS_IDS: dict[tuple, int] = {}  # (kernel, meta id, dtype, classes of the plan's ints) -> a small int


class _Plan(NamedTuple):
    """What one query layout (shape, strides), kv head count and dtype fix for every call of a server."""

    like: bool  # q's strides are the contiguous ones: the output is torch.empty_like(q)
    out_shape: tuple[int, int, int, int]
    work_n: int  # fp32 elements of the split workspace; 0 for one split
    lse_bytes: int  # where the partial LSEs start in it
    lq: int
    n_rows: int
    mid: tuple  # the forward's ints after the kv strides and before (S, diag, n_rows): o, p strides, h_grid, G
    cmid: tuple  # the combine's ints
    fgrid: tuple[int, int, int]
    cgrid: tuple[int, int, int]
    scale: float  # the default scale, times log2(e)
    fwd_id: int  # the forward's keywords and the classes of its plan ints (the combine's below)
    comb_id: int
    fwd_meta: tuple[dict, int | None]
    comb_meta: tuple[dict, int | None]


def _class_id(*parts: Any) -> int:
    return _CLASS_IDS.setdefault(parts, len(_CLASS_IDS))


class KvServer:
    """``server(q, k, v, sm_scale=None) -> out`` for one attention_kv config, causal flag and alignment."""

    __slots__ = ("config", "causal", "lower_right", "_block_m", "_splits", "_pack", "_metas", "_plans")

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
        self._plans: dict[tuple, _Plan] = {}

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

    def _plan(self, q: torch.Tensor, q_strides: tuple, hkv: int) -> _Plan:
        b, hq, lq, d = q.shape
        g = hq // hkv
        pack = self._pack and g > 1
        n_rows = lq * g if pack else lq
        h_grid = hkv if pack else hq
        ns = self._splits
        o_strides = (hq * lq * d, lq * d, d, 1)
        rows = b * hq * lq
        if ns > 1:
            p_strides = (rows * d, hq * lq * d, lq * d, d, 1, rows, hq * lq, lq, 1)
        else:
            p_strides = (0, 0, 0, 0, 0, 0, 0, 0, 0)
        mid = (*o_strides, *p_strides, h_grid, g)
        cmid = (ns, hq, lq, *p_strides, *o_strides)
        fwd_meta = self._meta(d, pack, q.dtype)
        comb_meta = _combine_meta(d)
        plan = _Plan(
            like=tuple(q_strides) == o_strides, out_shape=(b, hq, lq, d), work_n=ns * rows * (d + 1) if ns > 1 else 0,
            lse_bytes=ns * rows * d * 4, lq=lq, n_rows=n_rows, mid=mid, cmid=cmid,
            fgrid=(-(-n_rows // self._block_m), b * h_grid, ns),
            cgrid=(-(-(hq * lq) // _launch.COMBINE_ROWS), b, 1), scale=(1.0 / math.sqrt(d)) * LOG2E,
            fwd_id=_class_id("fwd", fwd_meta[1], q.dtype, ns > 1, tuple(map(arg_class, (*q_strides, *mid, n_rows)))),
            comb_id=_class_id("combine", comb_meta[1], q.dtype, tuple(map(arg_class, cmid))),
            fwd_meta=fwd_meta, comb_meta=comb_meta)
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
        self._plans[(q.shape, q_strides, hkv, q.dtype)] = plan
        return plan

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None) -> torch.Tensor:
        """The launch for inputs already checked (``launch.check_inputs``)."""
        qs = q.stride()
        plan = self._plans.get((q.shape, qs, k.shape[1], q.dtype))
        if plan is None:
            plan = self._plan(q, qs, k.shape[1])
        (like, out_shape, work_n, lse_bytes, lq, n_rows, mid, cmid, fgrid, cgrid, scale, fwd_id, comb_id, fwd_meta,
         comb_meta) = plan
        s = k.shape[2]
        diag = s - lq if self.lower_right else 0
        if sm_scale is not None:
            scale = float(sm_scale) * LOG2E
        out = torch.empty_like(q) if like else torch.empty(out_shape, dtype=q.dtype, device=q.device)
        work = torch.empty(work_n, dtype=_F32, device=q.device) if work_n else None
        ks, vs = k.stride(), v.stride()
        ctx = launch_context() if _FWD.enabled else None
        classes = None if ctx is None else int_classes((*ks, *vs, s, diag))
        if classes is None:  # Triton's interpreter, a launch hook, an int past 32 bits: the generic path
            po, plse = _partials(out, work, lse_bytes)
            meta, meta_id = fwd_meta
            _FWD(fgrid, (q, k, v, out, po, plse, scale, *qs, *ks, *vs, *mid, s, diag, n_rows), meta, meta_id)
            if work is not None:
                meta, meta_id = comb_meta
                _COMBINE(cgrid, (po, plse, out, *cmid), meta, meta_id)
            return out
        qp, kp, vp, op = q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr()
        if work is None:
            wp = lp = op
        else:
            wp = work.data_ptr()
            lp = wp + lse_bytes
        aligned = not (qp | kp | vp | op | wp | lp) & 15  # else a tuple of six flags, one of them False
        key = (fwd_id, k.dtype, v.dtype, aligned or (not qp & 15, not kp & 15, not vp & 15, not op & 15,
                                                     not wp & 15, not lp & 15), classes)
        if not _FWD.launch(ctx, key, fgrid, (qp, kp, vp, op, wp, lp, scale, *qs, *ks, *vs, *mid, s, diag, n_rows)):
            po, plse = _partials(out, work, lse_bytes)
            _FWD.first(ctx, key, fgrid, (q, k, v, out, po, plse, scale, *qs, *ks, *vs, *mid, s, diag, n_rows),
                       fwd_meta[0])
        if work is not None:
            key = (comb_id, aligned or (not wp & 15, not lp & 15, not op & 15))
            if not _COMBINE.launch(ctx, key, cgrid, (wp, lp, op, *cmid)):
                po, plse = _partials(out, work, lse_bytes)
                _COMBINE.first(ctx, key, cgrid, (po, plse, out, *cmid), comb_meta[0])
        return out

    def __repr__(self) -> str:
        return f"KvServer(config={self.config!r}, causal={self.causal}, lower_right={self.lower_right})"


def _partials(out: torch.Tensor, work: torch.Tensor | None, lse_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' partial-output and partial-LSE tensors: views of the workspace, or ``out`` (never read) for
    one split."""
    if work is None:
        return out, out
    return work, work[lse_bytes // 4:]


_COMBINE_METAS: dict[int, tuple[dict, int | None]] = {}


def _combine_meta(d: int) -> tuple[dict, int | None]:
    found = _COMBINE_METAS.get(d)
    if found is None:
        meta = dict(HEAD_DIM=d, BLOCK_D=_launch._block_d(d), BLOCK_R=_launch.COMBINE_ROWS,
                    num_warps=_launch.COMBINE_WARPS, num_stages=1)
        found = _COMBINE_METAS[d] = (meta, _COMBINE.meta_id(meta))
    return found


def runners() -> tuple[FastRunner, FastRunner]:
    """The forward and combine runners (their hit / miss / fallback counts), for tests and benchmarks."""
    return _FWD, _COMBINE
