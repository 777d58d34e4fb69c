"""Hugging Face transformers integration: serve a model's attention through ``flashcore.autotune.attention``.

    from flashcore.autotune.integrations.transformers import register
    name = register()                        # "fc_tuned"
    model.set_attn_implementation(name)      # or from_config(config, attn_implementation=name)

``register`` adds :func:`attention_forward` to ``transformers.AttentionInterface`` and, under the same name, the
mask function registered for "sdpa" to ``transformers.AttentionMaskInterface``: masks are built exactly as for
"sdpa", so none is materialized where sdpa would skip it (no padding, prefill or one-token decode) and
``is_causal`` is used instead. Registering the mask function is required, not an optimization: transformers
builds no mask at all (padding ignored) for a name it has no mask function for.

The default name is "fc_tuned" because transformers gives names special meaning by substring:
``is_flash_attention_requested`` is ``"flash" in name`` (such names are treated as FlashAttention: a hub kernel
is looked up and loaded, flash-specific mask and generation paths are taken), a name of the form
``owner/repo[@rev][:fn]`` is a hub kernel to download, ``"flex_attention" in name`` runs flex attention's
model checks, and a ``paged|`` prefix is rewritten: ``register`` refuses such names, and "sdpa" / "eager"
themselves. ``"sdpa" in name`` makes transformers check, when the name is set, that the model supports sdpa
(``_sdpa_can_dispatch``); such names are allowed, but the default stays clear of every substring transformers
looks for. The function follows sdpa's contract, so a model should support sdpa: :func:`set_implementation`
checks ``_supports_sdpa`` for any name.

:func:`attention_forward` mirrors ``transformers.integrations.sdpa_attention.sdpa_attention_forward``: grouped
query heads go as ``enable_gqa=True`` (no ``repeat_kv`` copy), ``scaling`` is the softmax scale, ``is_causal`` is
decided as sdpa decides it (q_len > 1, no mask, and the module causal), the keys a top-left causal mask hides are
sliced off, and the output is returned as (B, L, H, D) contiguous with ``None`` weights. A call the tuned
candidates do not serve (padding or other masks, dropout, fp32, gradients, ``position_bias``, ``softcap``) is
handed to transformers' own ``sdpa_attention_forward`` unchanged, so it runs exactly as on "sdpa" (including
its choice between ``enable_gqa`` and ``repeat_kv`` for masked grouped-query calls).

:func:`stats` counts what served each eager call (counting is skipped while torch.compile traces).
"""

from __future__ import annotations

import torch

from flashcore.autotune.runtime.dispatch import get_kernel
from flashcore.autotune.runtime.op import serve, unsupported_reason

DEFAULT_NAME = "fc_tuned"
_MAX_REASONS = 64  # distinct fallback reasons kept; later ones are counted under "other"


def _new_stats() -> dict:
    return {"calls": 0, "tuned": 0, "backend": 0, "fallback": 0, "by_candidate": {}, "by_source": {},
            "fallback_reasons": {}, "by_phase": {p: {"calls": 0, "served": 0} for p in ("prefill", "decode")}}


_STATS = _new_stats()
_IS_BACKEND: dict[str, bool] = {}  # candidate name -> whether it is a backend (TunedKernel.backend, memoised)


def stats() -> dict:
    """What served the eager calls of :func:`attention_forward` since the last :func:`reset_stats`.

    ``calls`` = ``tuned`` (one of our kernels) + ``backend`` (a backend candidate the tables picked, such as
    "sdpa_cudnn") + ``fallback`` (transformers' sdpa, for a call the tuned path does not serve). ``by_candidate``
    counts served calls per candidate name, ``by_source`` per lookup source ("exact", "shipped", "nearest",
    "default": whether tuned tables were used), ``fallback_reasons`` fallbacks per reason, ``by_phase`` calls and
    served calls for "decode" (one query token) and "prefill" (more than one).
    """
    s = _STATS
    return {**{k: s[k] for k in ("calls", "tuned", "backend", "fallback")},
            **{k: dict(s[k]) for k in ("by_candidate", "by_source", "fallback_reasons")},
            "by_phase": {p: dict(c) for p, c in s["by_phase"].items()}}


def reset_stats() -> None:
    """Zero the counters of :func:`stats`."""
    _STATS.clear()
    _STATS.update(_new_stats())


def _bump(counts: dict, key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _count(query: torch.Tensor, key: torch.Tensor, is_causal: bool, reason: str | None) -> None:
    """Record one call: the candidate ``attention`` serves (the same memoised ``get_kernel`` lookup it makes, a
    dictionary hit), or the fallback reason."""
    s = _STATS
    s["calls"] += 1
    phase = s["by_phase"]["decode" if query.shape[2] == 1 else "prefill"]
    phase["calls"] += 1
    if reason is not None:
        s["fallback"] += 1
        reasons = s["fallback_reasons"]
        _bump(reasons, reason if reason in reasons or len(reasons) < _MAX_REASONS else "other")
        return
    # attention() passes no CausalBias here (transformers gives tensors or None), so lower_right is False
    tuned = get_kernel(query.shape, query.dtype, is_causal, kv_heads=key.shape[1], kv_len=key.shape[2],
                       lower_right=False)
    name = tuned.kernel
    backend = _IS_BACKEND.get(name)
    if backend is None:
        backend = _IS_BACKEND[name] = tuned.backend
    s["backend" if backend else "tuned"] += 1
    phase["served"] += 1
    _bump(s["by_candidate"], name)
    _bump(s["by_source"], tuned.source)


def _sdpa_forward():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract (as ``sdpa_attention_forward``): query (B, Hq, L, D), key and
    value (B, Hkv, S, D) -> ((B, L, Hq, D) contiguous, None), through ``flashcore.autotune.attention``."""
    counting = not torch.compiler.is_compiling()
    special = ("position_bias" if kwargs.get("position_bias") is not None
               else "softcap" if kwargs.get("softcap") is not None else None)
    if special is not None:  # sdpa builds a float mask from position_bias, and refuses softcap
        if counting:
            _count(query, key, False, f"{special} (handled by transformers' sdpa)")
        return _sdpa_forward()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                               is_causal=is_causal, **kwargs)

    enable_gqa = getattr(module, "num_key_value_groups", 1) > 1
    q_length = query.shape[2]
    # sdpa_attention_forward's decision, in its order (the shape first: torch.compile's dynamic shapes need it)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = q_length > 1 and attention_mask is None and causal
    if torch.jit.is_tracing() and isinstance(causal, torch.Tensor):
        causal = causal.item()
    k, v = key, value
    if causal and key.shape[2] > q_length:  # top-left causal hides the keys past q_length (empty static cache)
        k, v = key[:, :, :q_length], value[:, :, :q_length]

    reason = unsupported_reason(query, k, v, attention_mask, dropout, enable_gqa, causal)
    if counting:
        _count(query, k, causal, reason)
    if reason is not None:
        return _sdpa_forward()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                               is_causal=is_causal, **kwargs)
    out = serve(query, k, v, bool(causal), scaling)  # checked just above: no second check
    return out.transpose(1, 2).contiguous(), None


def _check_name(name: str) -> None:
    """Refuse names transformers would treat as something else (see the module docstring)."""
    problem = None
    if not name or not isinstance(name, str):
        problem = "must be a non-empty string"
    elif "flash" in name:
        problem = "contains 'flash': transformers treats it as a FlashAttention implementation to load"
    elif "/" in name:
        problem = "contains '/': transformers treats 'owner/repo' names as hub kernels to download"
    elif "flex_attention" in name or name.startswith("paged|"):
        problem = "transformers treats names with 'flex_attention' or a 'paged|' prefix specially"
    elif name in ("sdpa", "eager"):
        problem = "is one of transformers' own implementations (the reference this one is checked against)"
    if problem:
        raise ValueError(f"attention implementation name {name!r} {problem}; use e.g. {DEFAULT_NAME!r}")


def register(name: str = DEFAULT_NAME) -> str:
    """Register :func:`attention_forward` and the sdpa mask function under ``name`` (idempotent); returns it.

    Use it as ``model.set_attn_implementation(name)`` or ``from_pretrained(..., attn_implementation=name)``.
    """
    _check_name(name)
    from transformers import AttentionInterface

    try:
        from transformers import AttentionMaskInterface
    except ImportError:  # releases that do not export it at the top level
        from transformers.masking_utils import AttentionMaskInterface

    sdpa_mask = AttentionMaskInterface()["sdpa"]  # whichever sdpa mask function this version registers
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def set_implementation(model, name: str) -> None:
    """Switch ``model`` to the attention implementation ``name`` (``set_attn_implementation`` where it exists,
    the config attribute on versions without it). Refuses a model that does not support sdpa, whose contract
    :func:`attention_forward` follows."""
    if name not in ("sdpa", "eager") and getattr(model, "_supports_sdpa", True) is False:
        raise ValueError(f"{type(model).__name__} does not support sdpa, so it cannot use {name!r}")
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(name)
    else:
        model.config._attn_implementation = name
