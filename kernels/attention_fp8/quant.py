"""FP8 (E4M3) quantization recipes for attention inputs (PyTorch only, no Triton).

A ``Recipe`` says which matmuls run in FP8 and how each operand is scaled:

- ``qk_fp8``: Q·Kᵀ runs on E4M3 operands (fp32 accumulation). False keeps Q and K in their 16-bit input dtype,
  unquantized: the logit noise from quantizing Q and K dominates FP8 attention's error on N(0, 1) inputs
  (/work/shared/anchors/README.md, 5.2% relative L2), so this is the accurate (and slower) recipe, and its
  ``q_scale``, ``k_scale`` and ``smooth_k`` are ignored.
- ``pv_fp8``: P·V runs on E4M3 operands with V stored transposed (K-major, as Hopper's FP8 wgmma needs its second
  operand). False keeps V in 16 bits and casts P to that dtype (the fp16 kernel's P·V); ``v_scale`` and
  ``p_scale`` are then ignored.
- ``q_scale``, ``k_scale``, ``v_scale``: scaling granularity, "tensor" (one scale), "head" (one per (batch,
  head)) or "block" (one per BLOCK_M rows of Q, per BLOCK_N tokens of K or V, i.e. per kernel tile).
  A scale is amax / 448, so each group uses E4M3's whole range.
- ``smooth_k``: subtract K's mean over tokens per (batch, head) before quantizing. Exact in exact arithmetic:
  every logit of a query row moves by q·mean, which softmax cancels; it shrinks K's range when K has a shared
  offset (as real keys often do), so the same 3 mantissa bits cover less.
- ``p_scale``: multiply P (in [0, 1]) by 448 before its E4M3 cast and divide the output by 448 after, so small
  probabilities stay normal numbers instead of flushing into E4M3's subnormals (below 2⁻⁶).

Scales come out as fp32 tensors of shape (B, H, n): n = cdiv(S, block) for "block", else 1 ("tensor" repeats its
one value for every (batch, head)); the kernel reads element [b, h, tile] or [b, h, 0].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite E4M3 value
P_MULT = 448.0   # P's multiplier before its cast when p_scale is on
GRANULARITIES = ("tensor", "head", "block")
V_ALIGN = 16     # transposed V rows are padded to 16 tokens (16-byte rows, as a tensor descriptor needs)
_MIN_SCALE = 1e-12  # an all-zero group gets this scale instead of 0 (no division by zero)

# config key -> Recipe field
CONFIG_FIELDS = {"FP8_QK": "qk_fp8", "FP8_PV": "pv_fp8", "Q_SCALE": "q_scale", "K_SCALE": "k_scale",
                 "V_SCALE": "v_scale", "SMOOTH_K": "smooth_k", "P_SCALE": "p_scale"}


@dataclass(frozen=True)
class Recipe:
    """How attention inputs are quantized and which matmuls run in FP8 (see the module docstring)."""

    qk_fp8: bool = True
    pv_fp8: bool = True
    q_scale: str = "head"
    k_scale: str = "head"
    v_scale: str = "head"
    smooth_k: bool = False
    p_scale: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in (bool, "bool") and not isinstance(value, bool):
                raise ValueError(f"recipe field {f.name} must be true or false; got {value!r}")
            if f.name.endswith("_scale") and f.name != "p_scale" and value not in GRANULARITIES:
                raise ValueError(f"recipe field {f.name} must be one of {', '.join(GRANULARITIES)}; got {value!r}")

    def canonical(self) -> Recipe:
        """The same computation with every ignored field at its default (two configs that differ only there
        launch the same kernel on the same inputs)."""
        out = self
        if not self.qk_fp8:
            out = replace(out, q_scale="head", k_scale="head", smooth_k=False)
        if not self.pv_fp8:
            out = replace(out, v_scale="head", p_scale=True)
        return out

    def to_config(self) -> dict[str, bool | str]:
        """The recipe as config entries (bools and short strings, as cached configs allow)."""
        return {key: getattr(self, name) for key, name in CONFIG_FIELDS.items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Recipe:
        """The recipe of a config; keys it leaves out take the defaults. ValueError on bad values."""
        return cls(**{name: config[key] for key, name in CONFIG_FIELDS.items() if key in config})

    @property
    def label(self) -> str:
        """A short readable id such as ``qk8.pv8.qH.kB.vH.smooth.p448``."""
        parts = ["qk8" if self.qk_fp8 else "qk16", "pv8" if self.pv_fp8 else "pv16"]
        if self.qk_fp8:
            parts += [f"q{self.q_scale[0].upper()}", f"k{self.k_scale[0].upper()}"]
            parts += ["smooth"] if self.smooth_k else []
        if self.pv_fp8:
            parts += [f"v{self.v_scale[0].upper()}"] + (["p448"] if self.p_scale else [])
        return ".".join(parts)


@dataclass(frozen=True)
class QuantizedInputs:
    """What the FP8 kernel reads. ``q``, ``k``: (B, H, S, D), E4M3 when ``recipe.qk_fp8`` else the 16-bit
    inputs. ``v``: E4M3 V transposed, (B, H, D, S rounded up to 16) contiguous, zero past S, when
    ``recipe.pv_fp8``; else the 16-bit (B, H, S, D) input. Scales: fp32 (B, H, n), all ones for unquantized
    operands (see the module docstring)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_scale: torch.Tensor
    k_scale: torch.Tensor
    v_scale: torch.Tensor
    recipe: Recipe
    block_m: int
    block_n: int
    out_dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.q.shape)  # type: ignore[return-value]

    def v_tokens_major(self) -> torch.Tensor:
        """V as a (B, H, S, D) view (of the transposed storage when FP8)."""
        if self.recipe.pv_fp8:
            return self.v.transpose(-1, -2)[:, :, : self.q.shape[2], :]
        return self.v


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def scales_for(x: torch.Tensor, granularity: str, block: int) -> torch.Tensor:
    """fp32 (B, H, n) scales amax / 448 of ``x`` (B, H, S, D) at ``granularity`` (blocks of ``block`` tokens)."""
    b, h, s, d = x.shape
    a = x.detach().float().abs()
    if granularity == "tensor":
        amax = a.amax().reshape(1, 1, 1).expand(b, h, 1)
    elif granularity == "head":
        amax = a.amax(dim=(2, 3)).reshape(b, h, 1)
    elif granularity == "block":
        n = _cdiv(s, block)
        padded = torch.nn.functional.pad(a, (0, 0, 0, n * block - s))
        amax = padded.reshape(b, h, n, block * d).amax(dim=3)
    else:
        raise ValueError(f"unknown scaling granularity {granularity!r}; known: {', '.join(GRANULARITIES)}")
    return (amax / FP8_MAX).clamp_min(_MIN_SCALE).contiguous()


def expand_scales(scales: torch.Tensor, block: int, seq_len: int) -> torch.Tensor:
    """Per-token fp32 scales (B, H, S, 1) from (B, H, n) scales: n == 1 applies to every token, else token t
    takes block t // block."""
    if scales.shape[2] == 1:
        return scales[..., None].expand(*scales.shape[:2], seq_len, 1)
    return scales.repeat_interleave(block, dim=2)[:, :, :seq_len, None]


def to_fp8(x: torch.Tensor, scales: torch.Tensor, block: int) -> torch.Tensor:
    """E4M3 of ``x`` / its per-token scales (round to nearest even; |x| / scale <= 448 by construction)."""
    per_token = expand_scales(scales, block, x.shape[2])
    return (x.float() / per_token).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def smooth(k: torch.Tensor) -> torch.Tensor:
    """K minus its mean over tokens, per (batch, head), in fp32."""
    kf = k.float()
    return kf - kf.mean(dim=2, keepdim=True)


def quantize(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, recipe: Recipe, block_m: int,
             block_n: int) -> QuantizedInputs:
    """Quantize (B, H, S, D) 16-bit q, k, v for the FP8 kernel per ``recipe`` with tiles ``block_m`` x
    ``block_n`` (they define the "block" scaling groups, so the kernel must run the same tiles)."""
    recipe = recipe.canonical()
    b, h, s, d = q.shape
    ones = torch.ones(b, h, 1, dtype=torch.float32, device=q.device)
    if recipe.qk_fp8:
        kk = smooth(k) if recipe.smooth_k else k
        qs, ks = scales_for(q, recipe.q_scale, block_m), scales_for(kk, recipe.k_scale, block_n)
        q8, k8 = to_fp8(q, qs, block_m), to_fp8(kk, ks, block_n)
    else:
        q8, k8, qs, ks = q, k, ones, ones
    if recipe.pv_fp8:
        vs = scales_for(v, recipe.v_scale, block_n)
        vt = torch.zeros(b, h, d, _cdiv(s, V_ALIGN) * V_ALIGN, dtype=FP8_DTYPE, device=v.device)
        vt[..., :s] = to_fp8(v, vs, block_n).transpose(-1, -2)
    else:
        vt, vs = v, ones
    return QuantizedInputs(q8, k8, vt, qs, ks, vs, recipe, block_m, block_n, q.dtype)


def dequantize(qi: QuantizedInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 (B, H, S, D) values the kernel's operands stand for: E4M3 values times their scales (K smoothed
    when the recipe says so)."""
    s = qi.q.shape[2]
    q = qi.q.float() * expand_scales(qi.q_scale, qi.block_m, s)
    k = qi.k.float() * expand_scales(qi.k_scale, qi.block_n, s)
    v = qi.v_tokens_major().float() * expand_scales(qi.v_scale, qi.block_n, s)
    return q, k, v
