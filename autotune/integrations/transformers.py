"""Hugging Face transformers integration: serve a model's attention through ``flashcore.autotune.attention``.

    from flashcore.autotune.integrations.transformers import register
    name = register()                        # "fc_tuned"
    model.set_attn_implementation(name)      # or from_config(config, attn_implementation=name)

``register`` adds :func:`attention_forward` to ``transformers.AttentionInterface`` and, under the same name, a
mask function to ``transformers.AttentionMaskInterface`` that builds every mask exactly as sdpa's does
(``masking_utils.sdpa_mask``: none where sdpa skips it, ``is_causal`` instead) and, where it does build one,
notes on the mask tensor how it was built (:func:`_note_mask`). Registering a mask function is required, not an
optimization: transformers builds no mask at all (padding ignored) for a name it has no mask function for.

When transformers materializes a mask without padding (issue 18). ``sdpa_mask`` returns None only when
``_ignore_causal_mask_sdpa`` (masking_utils.py:252-302 in 5.24; line 292) allows it: q_length == 1 or q_length ==
kv_length (or an empty cache, q_offset == 0) with no padding and no sliding window reaching the keys. A plain
Qwen2.5-7B config (``use_sliding_window=False``: ``Qwen2Config.__post_init__`` sets ``sliding_window=None``,
every layer "full_attention") gets no mask in ``generate()`` with the dynamic cache, exactly like Llama
(reproduced on the CPU with transformers 5.24 and 5.17, the GPU machine's version: every call served). A
measurement where no call was served, prefill included (0 of 128 = 4 layers x (1 + 31 steps)), needs a mask
built for the prefill too: a sliding window no longer than the prompt, or padding in the prompts (a random
prompt holding ``pad_token_id`` with no ``attention_mask`` given: generate() infers one from it). Each now has
its own fallback reason. (A name without a mask function gets no mask at all, masking_utils.py:830-831.) The
masks built without padding come from:

- a real sliding window: ``use_sliding_window=True`` and layers at or past ``max_window_layers`` (Qwen2), or
  Gemma-2's alternate layers: ``create_sliding_window_causal_mask`` passes ``local_size`` and
  ``_ignore_causal_mask_sdpa`` refuses to skip once ``kv_length >= local_size`` (masking_utils.py:286). That
  mask differs from causal: such calls fall back, counted as "mask: sliding window of W tokens";
- a compileable (static) cache: ``create_causal_mask`` forbids the skip for one-token steps
  (masking_utils.py:976, ``cache.is_compileable and q_length == 1``) and ``generate`` builds those masks ahead
  (generation/utils.py:729-758); they hide the cache slots not yet written (kv = max_cache_len), so they are
  not plain causal over the keys given: counted as "mask: static cache";
- a chunk of several queries over a non-empty cache (``prefill_chunk_size``, a continued conversation,
  assisted decoding): neither condition above holds (q_length != kv_length, q_offset > 0), so a boolean mask
  is built although it is plain bottom-right causal. The mask function knows that from its arguments
  (``causal_mask_function``, no padding mask, no window, integer offsets with q_offset + q_length ==
  kv_length): it notes it on the mask and :func:`attention_forward` serves the call as ``causal_lower_right``
  without reading the mask (no device sync). A mask changed in place afterwards (its ``_version`` moved), a
  mask built under torch.compile, or any other mask is not trusted: sdpa runs it.

The default name is "fc_tuned" because transformers gives names special meaning by substring:
``is_flash_attention_requested`` is ``"flash" in name``, ``owner/repo[@rev][:fn]`` is a hub kernel,
``"flex_attention" in name`` runs flex attention's checks, a ``paged|`` prefix is rewritten: ``register``
refuses such names, and "sdpa" / "eager" themselves. ``"sdpa" in name`` makes transformers check sdpa support
when the name is set; such names are allowed, but the default stays clear of every substring transformers looks
for. The function follows sdpa's contract: :func:`set_implementation` checks ``_supports_sdpa``, except for
models whose only gap is attention logit softcapping (see below).

:func:`attention_forward` mirrors ``transformers.integrations.sdpa_attention.sdpa_attention_forward``: grouped
query heads go as ``enable_gqa=True`` (no ``repeat_kv`` copy), ``scaling`` is the softmax scale, ``is_causal`` is
decided as sdpa decides it (q_len > 1, no mask, and the module causal), the keys a top-left causal mask hides are
sliced off, and the output is returned as (B, L, H, D) contiguous with ``None`` weights. A call the tuned
candidates do not serve (padding or other masks, dropout, fp32, gradients, ``position_bias``) is handed to
transformers' own ``sdpa_attention_forward`` unchanged, so it runs exactly as on "sdpa". ``softcap`` (Gemma-2's
``attn_logit_softcapping``) goes to the model's own ``eager_attention_forward`` with sdpa's mask turned into
eager's additive one: sdpa cannot softcap (5.24 raises; 5.17 silently ignores it, a wrong answer).

:func:`stats` counts what served each eager call (counting is skipped while torch.compile traces).
"""

from __future__ import annotations

import sys

import torch

from flashcore.autotune.runtime.dispatch import get_kernel
from flashcore.autotune.runtime.op import planned, serve, unsupported_reason

DEFAULT_NAME = "fc_tuned"
_MAX_REASONS = 64  # distinct fallback reasons kept; later ones are counted under "other"
_NOTE = "_flashcore_mask"  # attribute the mask function sets on the masks it builds: (why, q_len, kv_len, _version)


def _new_stats() -> dict:
    return {"calls": 0, "tuned": 0, "backend": 0, "fallback": 0, "by_candidate": {}, "by_source": {},
            "fallback_reasons": {}, "by_phase": {p: {"calls": 0, "served": 0} for p in ("prefill", "decode")}}


_STATS = _new_stats()
# served calls by call class (q's shape, kv heads, kv length, dtype, causal, lower_right): counted in the hot
# path as one dictionary update, resolved to candidates (the memoised get_kernel lookup) by stats()
_SERVED: dict[tuple, list] = {}


def stats() -> dict:
    """What served the eager calls of :func:`attention_forward` since the last :func:`reset_stats`.

    ``calls`` = ``tuned`` (one of our kernels) + ``backend`` (a backend candidate the tables picked, such as
    "sdpa_cudnn") + ``fallback`` (transformers' sdpa or eager attention, for a call the tuned path does not
    serve). ``by_candidate`` counts served calls per candidate name, ``by_source`` per lookup source ("exact",
    "shipped", "nearest", "default"), ``fallback_reasons`` fallbacks per reason, ``by_phase`` calls and served
    calls for "decode" (one query token) and "prefill" (more than one).
    """
    _resolve()
    s = _STATS
    return {**{k: s[k] for k in ("calls", "tuned", "backend", "fallback")},
            **{k: dict(s[k]) for k in ("by_candidate", "by_source", "fallback_reasons")},
            "by_phase": {p: dict(c) for p, c in s["by_phase"].items()}}


def reset_stats() -> None:
    """Zero the counters of :func:`stats`."""
    _STATS.clear()
    _STATS.update(_new_stats())
    _SERVED.clear()


def _bump(counts: dict, key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _count(query: torch.Tensor, key: torch.Tensor, is_causal: bool, reason: str | None,
           lower_right: bool = False) -> None:
    """Record one call: served (by its call class, resolved to the candidate later), or the fallback reason."""
    if reason is None:  # kv lengths other than L by power of two (as get_kernel), with one length seen
        s, lq = key.shape[2], query.shape[2]
        served = (query.shape, key.shape[1], s if s == lq else -(1 << (s - 1).bit_length()), query.dtype,
                  is_causal, lower_right)
        found = _SERVED.get(served)
        if found is None:
            _SERVED[served] = [1, s]
        else:
            found[0] += 1
        return
    s = _STATS
    s["calls"] += 1
    s["fallback"] += 1
    s["by_phase"]["decode" if query.shape[2] == 1 else "prefill"]["calls"] += 1
    reasons = s["fallback_reasons"]
    _bump(reasons, reason if reason in reasons or len(reasons) < _MAX_REASONS else "other")


def _resolve() -> None:
    """Fold the served call classes counted so far into the stats: the candidate get_kernel serves each."""
    s = _STATS
    for (shape, kv_heads, _, dtype, causal, lower_right), (n, kv_len) in _SERVED.items():
        tuned = get_kernel(shape, dtype, causal, kv_heads=kv_heads, kv_len=kv_len, lower_right=lower_right)
        s["calls"] += n
        s["backend" if tuned.backend else "tuned"] += n
        phase = s["by_phase"]["decode" if shape[2] == 1 else "prefill"]
        phase["calls"] += n
        phase["served"] += n
        for counts, name in ((s["by_candidate"], tuned.kernel), (s["by_source"], tuned.source)):
            counts[name] = counts.get(name, 0) + n
    _SERVED.clear()


def _why_built(kw: dict) -> str | None:
    """Why ``sdpa_mask`` materialized a mask, from its keyword arguments alone (no tensor is read): None when
    the mask is plain bottom-right causal over (q_length, kv_length)."""
    from transformers.masking_utils import causal_mask_function

    q_offset, kv_offset = kw.get("q_offset", 0), kw.get("kv_offset", 0)
    if isinstance(q_offset, torch.Tensor) or isinstance(kv_offset, torch.Tensor):
        return "mask: static cache (hides the cache slots not yet written)"
    if kw.get("local_size") is not None:
        return f"mask: sliding window of {kw['local_size']} tokens"
    if kw.get("mask_function", causal_mask_function) is not causal_mask_function:
        return "mask: a mask function other than causal (chunks, packing, overlays)"
    if kw.get("attention_mask") is not None:
        return "mask: built over a 2D attention_mask (padding, or all ones: its values are not read)"
    if kv_offset != 0 or q_offset + kw["q_length"] != kw["kv_length"]:
        return "mask: queries not at the end of the keys"
    return None


def _note_mask(mask: torch.Tensor, kw: dict) -> torch.Tensor:
    why = _why_built(kw)
    if why is not None and why.startswith("mask: static") and not mask.is_contiguous():
        mask = mask.contiguous()  # what generate() makes of it (generation/utils.py:750-757): the note survives
    # an inference tensor has no version counter: its note says why, never "plain causal" (not trusted)
    version = None if mask.is_inference() else mask._version
    mask.__dict__[_NOTE] = (why if version is not None or why else "mask: an inference tensor (untracked)",
                            kw["q_length"], kw["kv_length"], version)
    return mask


def _mask_function(sdpa_mask):
    """``sdpa_mask`` noting on each mask it materializes how it was built (keyword calls, eager mode only)."""

    def flashcore_sdpa_mask(*args, **kwargs):
        mask = sdpa_mask(*args, **kwargs)
        if (mask is not None and not args and type(mask) is torch.Tensor and "q_length" in kwargs
                and "kv_length" in kwargs and not torch.compiler.is_compiling()):
            mask = _note_mask(mask, kwargs)
        return mask

    flashcore_sdpa_mask.wrapped = sdpa_mask
    return flashcore_sdpa_mask


def _sdpa_forward():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract (as ``sdpa_attention_forward``): query (B, Hq, L, D), key and
    value (B, Hkv, S, D) -> ((B, L, Hq, D) contiguous, None), through ``flashcore.autotune.attention``."""
    counting = not torch.compiler.is_compiling()
    if kwargs.get("softcap") is not None:  # sdpa cannot softcap: the model's own eager attention can
        if counting:
            _count(query, key, False, "softcap (transformers' eager attention)")
        return _softcap_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    if kwargs.get("position_bias") is not None:  # sdpa builds a float mask from it
        if counting:
            _count(query, key, False, "position_bias (handled by transformers' sdpa)")
        return _sdpa_forward()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                               is_causal=is_causal, **kwargs)

    enable_gqa = getattr(module, "num_key_value_groups", 1) > 1
    q_length = query.shape[2]
    mask, causal, lower_right, why = attention_mask, is_causal, False, None
    if mask is not None and counting:  # a mask our mask function built: plain causal from how it was built?
        note = mask.__dict__.get(_NOTE) if type(mask) is torch.Tensor else None
        if note is not None:
            why = note[0]
            if why is None and note[1:] == (q_length, key.shape[2], mask._version):
                mask, causal, lower_right = None, True, 1 < q_length < key.shape[2]
    # sdpa_attention_forward's decision, in its order (the shape first: torch.compile's dynamic shapes need it)
    causal = causal if causal is not None else getattr(module, "is_causal", True)
    causal = q_length > 1 and mask is None and causal
    if torch.jit.is_tracing() and isinstance(causal, torch.Tensor):
        causal = causal.item()
    k, v = key, value
    if causal and not lower_right and key.shape[2] > q_length:  # top-left causal hides the keys past q_length
        k, v = key[:, :, :q_length], value[:, :, :q_length]

    if mask is None and not dropout and counting and not lower_right:  # the op's hot path (a class seen before)
        out = planned(query, k, v, causal, scaling, enable_gqa)
        if out is not None:
            _count(query, k, causal, None)
            return out.transpose(1, 2).contiguous(), None
    reason = unsupported_reason(query, k, v, mask, dropout, enable_gqa, causal, scale=scaling)
    if counting:
        if reason is not None and why is not None:  # say why the mask is there, where that is known
            reason = why
        _count(query, k, causal, reason, lower_right)
    if reason is not None:
        return _sdpa_forward()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                               is_causal=is_causal, **kwargs)
    out = serve(query, k, v, bool(causal), scaling, lower_right)  # checked just above: no second check
    return out.transpose(1, 2).contiguous(), None


def _eager_function(module):
    """The model's own ``eager_attention_forward`` (what "eager" runs for it), else Gemma-2's."""
    found = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if found is None:
        from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward as found
    return found


def _softcap_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs):
    """What transformers' "eager" computes for a softcapped call, given sdpa's mask convention: a boolean mask
    (True = attend) or None for sdpa's ``is_causal`` decision, turned into eager's additive mask."""
    q_length, kv_length = query.shape[2], key.shape[2]
    mask = attention_mask
    if mask is None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        if q_length > 1 and causal:  # sdpa's top-left causal
            mask = torch.ones(q_length, kv_length, dtype=torch.bool, device=query.device).tril()[None, None]
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.where(mask, torch.zeros((), device=mask.device, dtype=query.dtype),
                           torch.finfo(query.dtype).min)
    out, _ = _eager_function(module)(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    return out, None


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
    """Register :func:`attention_forward` and the noting sdpa mask function under ``name`` (idempotent);
    returns it. Use it as ``model.set_attn_implementation(name)`` or ``from_pretrained(...,
    attn_implementation=name)``.
    """
    _check_name(name)
    from transformers import AttentionInterface

    try:
        from transformers import AttentionMaskInterface
    except ImportError:  # releases that do not export it at the top level
        from transformers.masking_utils import AttentionMaskInterface

    sdpa_mask = AttentionMaskInterface()["sdpa"]  # whichever sdpa mask function this version registers
    current = AttentionMaskInterface._global_mapping.get(name)
    AttentionInterface.register(name, attention_forward)
    if getattr(current, "wrapped", None) is not sdpa_mask:
        AttentionMaskInterface.register(name, _mask_function(sdpa_mask))
    return name


def _softcap_only(model) -> bool:
    """Whether sdpa's only gap for this model is attention logit softcapping, which :func:`attention_forward`
    hands to the model's eager attention (Gemma-2: ``_supports_sdpa = False`` "sdpa does not support softcapping")."""
    import inspect

    eager = getattr(sys.modules.get(type(model).__module__), "eager_attention_forward", None)
    return eager is not None and "softcap" in inspect.signature(eager).parameters


def set_implementation(model, name: str) -> None:
    """Switch ``model`` to the attention implementation ``name`` (``set_attn_implementation`` where it exists,
    the config attribute on versions without it). Refuses a model that does not support sdpa, whose contract
    :func:`attention_forward` follows, unless its only gap is softcapping (handled by eager fallback)."""
    if (name not in ("sdpa", "eager") and getattr(model, "_supports_sdpa", True) is False
            and not _softcap_only(model)):
        raise ValueError(f"{type(model).__name__} does not support sdpa, so it cannot use {name!r}")
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(name)
    else:
        model.config._attn_implementation = name
