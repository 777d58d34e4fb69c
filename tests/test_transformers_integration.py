"""The transformers integration: tiny random-weight models give sdpa's logits and tokens through the tuned op.

CPU (Triton's interpreter) or the GPU where there is one, no downloads: configs with random weights, eval mode,
no grad. The reference is the same model and weights on "sdpa". Tolerances are the gate's (dtype, atol, rtol).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from flashcore.autotune.integrations import transformers as fct  # noqa: E402
from flashcore.kernels import get_family  # noqa: E402

from _procs import child_env  # noqa: E402
from _shapes import TOL  # noqa: E402

TOLERANCE = {name: (atol, rtol) for name, atol, rtol in TOL}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU tensors need the interpreter (conftest sets it)


def llama(kv_heads: int):
    return transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=kv_heads,
                                    head_dim=16, intermediate_size=128, num_hidden_layers=2, vocab_size=128)


def qwen2(**extra):
    return transformers.Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=128, num_hidden_layers=2, vocab_size=128, **extra)


def gpt2():
    # scale_attn_by_inverse_layer_idx: the softmax scale differs per layer, so `scaling` must be honoured
    return transformers.GPT2Config(n_embd=64, n_head=4, n_layer=2, n_positions=64, vocab_size=128,
                                   scale_attn_by_inverse_layer_idx=True)


CONFIGS = {"llama-gqa": lambda: llama(2), "llama-mha": lambda: llama(4), "gpt2": gpt2, "qwen2": qwen2,
           # Qwen2 with a real window: layer 1 slides over 8 tokens (layers >= max_window_layers slide)
           "qwen2-window": lambda: qwen2(use_sliding_window=True, sliding_window=8, max_window_layers=1)}


@pytest.fixture(autouse=True)
def _fresh_stats():
    fct.reset_stats()
    yield
    fct.reset_stats()


def build(config_name: str, dtype: torch.dtype):
    """The model on "sdpa" with seeded random weights, in ``dtype``, eval mode."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[config_name](), attn_implementation="sdpa")
    return model.to(DEVICE, dtype).eval()


def logits(model, name: str, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    fct.set_implementation(model, name)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.float()


def assert_logits_match(out: torch.Tensor, ref: torch.Tensor, dtype: str) -> None:
    """Within the dtype's tolerance, and the same argmax wherever the reference's top two are further apart
    than the tolerance allows (random weights give near-ties that rounding may flip)."""
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * (atol + rtol * top2[..., 0].abs())
    assert clear.float().mean() > 0.25, "too few clear argmaxes for the check to mean anything"
    assert torch.equal(out.argmax(-1)[clear], ref.argmax(-1)[clear])


def test_the_registered_name_is_one_transformers_treats_as_a_plain_function():
    name = fct.register()
    assert name == fct.DEFAULT_NAME == "fc_tuned" and "flash" not in name
    from transformers import AttentionInterface, AttentionMaskInterface

    assert AttentionInterface()[name] is fct.attention_forward
    assert AttentionMaskInterface()[name].wrapped is AttentionMaskInterface()["sdpa"]  # sdpa's, noting its masks
    is_flash = getattr(transformers.utils.generic, "is_flash_attention_requested", None)  # recent versions only
    assert is_flash is None or not is_flash(requested_attention_implementation=name)
    model = transformers.AutoModelForCausalLM.from_config(llama(2), attn_implementation=name)
    assert model.config._attn_implementation == name


def test_registering_twice_is_harmless():
    assert fct.register() == fct.register() == fct.DEFAULT_NAME
    model = build("llama-gqa", torch.float16)
    ids = torch.randint(0, 128, (1, 8), device=DEVICE)
    torch.testing.assert_close(logits(model, fct.register(), ids), logits(model, "sdpa", ids), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("bad", ["flashcore", "my_flash", "org/repo", "flex_attention_tuned", "sdpa", "eager"])
def test_names_transformers_would_misread_are_refused(bad):
    with pytest.raises(ValueError, match="attention implementation name"):
        fct.register(bad)


def test_importing_the_op_does_not_import_transformers():
    code = ("import sys; from flashcore.autotune import attention, get_kernel; "
            "assert 'transformers' not in sys.modules, 'transformers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(), timeout=120)


CASES = [(c, d) for c in ("llama-gqa", "llama-mha", "gpt2", "qwen2") for d in DTYPES]


@pytest.mark.parametrize("config_name,dtype", CASES, ids=[f"{c}-{d}" for c, d in CASES])
def test_prefill_logits_match_sdpa_and_every_call_is_served(config_name, dtype):
    model = build(config_name, DTYPES[dtype])
    ids = torch.randint(0, 128, (2, 24), device=DEVICE)
    ref = logits(model, "sdpa", ids)
    out = logits(model, fct.register(), ids)
    assert_logits_match(out, ref, dtype)
    s = fct.stats()
    layers = model.config.num_hidden_layers
    assert s["calls"] == s["tuned"] + s["backend"] == layers, s  # 100% served by a tuned candidate
    assert s["fallback"] == 0 and s["by_phase"]["prefill"] == {"calls": layers, "served": layers}, s
    assert sum(s["by_candidate"].values()) == layers and sum(s["by_source"].values()) == layers, s


def test_a_padded_batch_falls_back_to_sdpa_and_matches():
    model = build("llama-gqa", torch.float16)
    ids = torch.randint(0, 128, (2, 16), device=DEVICE)
    mask = torch.ones(2, 16, dtype=torch.long, device=DEVICE)
    mask[1, :5] = 0  # left padding in the second sequence
    ref = logits(model, "sdpa", ids, mask)
    out = logits(model, fct.register(), ids, mask)
    keep = mask.bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=2e-3, rtol=1e-3)
    s = fct.stats()
    assert s["calls"] == s["fallback"] == model.config.num_hidden_layers and s["tuned"] == 0, s
    assert any("mask" in reason for reason in s["fallback_reasons"]), s


def _has_family(name: str) -> bool:
    try:
        get_family(name)
    except KeyError:
        return False
    return True


def generate(model, name: str, prompt: torch.Tensor, new: int, **extra) -> torch.Tensor:
    fct.set_implementation(model, name)
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, pad_token_id=0, **extra)


@pytest.mark.parametrize("config_name", ["llama-gqa", "qwen2"])
def test_greedy_generate_gives_sdpa_tokens(config_name, capsys):
    """Without padding every call is served, Qwen2 (issue 18) as Llama: no mask reaches the function."""
    model = build(config_name, torch.float16)
    prompt = torch.randint(3, 128, (1, 12), device=DEVICE)
    new = 4

    expected = generate(model, "sdpa", prompt, new)
    fct.reset_stats()
    tokens = generate(model, fct.register(), prompt, new)
    assert torch.equal(tokens, expected)
    s = fct.stats()
    layers = model.config.num_hidden_layers
    decode = s["by_phase"]["decode"]
    assert s["by_phase"]["prefill"] == {"calls": layers, "served": layers}, s
    assert decode["calls"] == layers * (new - 1), s
    with capsys.disabled():
        print(f"\n[generate] decode attention calls served by a tuned candidate: {decode['served']} of "
              f"{decode['calls']}; fallback reasons: {s['fallback_reasons']}")
    if _has_family("attention_kv"):
        assert decode["served"] == decode["calls"], s


class _Attention(torch.nn.Module):
    """What attention functions read from a module: the grouped-query factor and causality."""

    def __init__(self, groups: int, causal: bool = True):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = causal


# name: (Hq, Hkv, L, S, causal module, mask, scaling)
DIRECT = {
    "gqa-causal": (4, 2, 20, 20, True, None, None),
    "mha-bidirectional": (4, 4, 20, 20, False, None, 0.3),
    "keys-past-the-queries-sliced": (4, 2, 12, 20, True, None, None),  # empty static cache at prefill
    "decode-one-query": (4, 2, 1, 20, True, None, None),
    "bool-mask": (4, 2, 20, 20, True, "bool", None),
}


@pytest.mark.parametrize("case", list(DIRECT))
def test_attention_forward_matches_sdpa_attention_forward(case):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    hq, hkv, lq, s, causal, mask, scaling = DIRECT[case]
    q = torch.randn(2, hq, lq, 16, dtype=torch.float16, device=DEVICE)
    k, v = (torch.randn(2, hkv, s, 16, dtype=torch.float16, device=DEVICE) for _ in range(2))
    attn_mask = torch.rand(2, 1, lq, s, device=DEVICE) > 0.3 if mask else None
    if attn_mask is not None:
        attn_mask[..., 0] = True  # no row without keys
    module = _Attention(hq // hkv, causal)
    out, weights = fct.attention_forward(module, q, k, v, attn_mask, scaling=scaling)
    ref, _ = sdpa_attention_forward(module, q, k, v, attn_mask, scaling=scaling)
    assert weights is None and out.shape == (2, lq, hq, 16) and out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=1e-3)
    # served unless masked, or attending over a longer cache (decode) without a kernel for unequal lengths
    falls_back = mask is not None or (lq == 1 and not _has_family("attention_kv"))
    s_ = fct.stats()
    assert s_["calls"] == 1 and s_["fallback"] == int(falls_back), s_


def test_dropout_falls_back():
    q = torch.randn(1, 2, 8, 16, dtype=torch.float16, device=DEVICE)
    out, _ = fct.attention_forward(_Attention(1), q, q, q, None, dropout=0.5)
    assert out.shape == (1, 8, 2, 16)
    assert fct.stats()["fallback_reasons"] == {"dropout is not supported": 1}


def test_torch_compile_traces_it_and_counts_nothing_while_compiling():
    q = torch.randn(1, 4, 20, 16, dtype=torch.float16, device=DEVICE)
    k, v = (torch.randn(1, 2, 20, 16, dtype=torch.float16, device=DEVICE) for _ in range(2))
    module = _Attention(2)

    def layer(q, k, v):
        return fct.attention_forward(module, q, k, v, None, scaling=0.25)[0] + 0.0

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    assert fct.stats()["calls"] == 0
    torch.testing.assert_close(out, layer(q, k, v))
    assert fct.stats()["calls"] == 1  # the eager call


def test_a_model_compiled_fullgraph_gives_the_eager_logits():
    model = build("llama-gqa", torch.float16)
    ids = torch.randint(0, 128, (1, 16), device=DEVICE)
    eager = logits(model, fct.register(), ids)
    fct.reset_stats()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out = compiled(input_ids=ids).logits.float()
    # the traced graph may round the model's own ops differently (transformers 5.17's RoPE under aot_eager)
    atol, rtol = TOLERANCE["float16"]
    torch.testing.assert_close(out, eager, atol=atol, rtol=rtol)
    assert fct.stats()["calls"] == 0  # nothing counted inside the compiled graph


def cache_keyword(model) -> str:
    """The forward's cache argument: "cache" from transformers 5.2x, "past_key_values" before (5.17)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def test_a_real_sliding_window_falls_back_with_its_reason():
    model = build("qwen2-window", torch.float16)  # layer 1 slides over 8 tokens; the prompt is longer
    prompt = torch.randint(3, 128, (1, 12), device=DEVICE)
    expected = generate(model, "sdpa", prompt, 3)
    fct.reset_stats()
    assert torch.equal(generate(model, fct.register(), prompt, 3), expected)
    s = fct.stats()
    assert s["fallback_reasons"] == {"mask: sliding window of 8 tokens": 3}, s  # layer 1's calls, named
    assert s["by_phase"]["prefill"] == {"calls": 2, "served": 1}, s  # layer 0 (full attention) is served


@pytest.mark.parametrize("config_name", ["llama-gqa", "qwen2"])
def test_a_chunk_over_a_cache_is_served_as_bottom_right_causal(config_name):
    """transformers materializes a plain causal mask for several queries over a non-empty cache; the mask
    function notes how it was built, so the call is served without reading the mask."""
    model = build(config_name, torch.float16)
    ids = torch.randint(3, 128, (2, 20), device=DEVICE)

    def run(name: str) -> torch.Tensor:
        fct.set_implementation(model, name)
        cache = {cache_keyword(model): transformers.DynamicCache(config=model.config)}
        with torch.no_grad():
            first = model(input_ids=ids[:, :12], use_cache=True, **cache).logits
            chunk = model(input_ids=ids[:, 12:], use_cache=True, **cache).logits
        return torch.cat([first, chunk], 1).float()

    ref = run("sdpa")
    fct.reset_stats()
    assert_logits_match(run(fct.register()), ref, "float16")
    s = fct.stats()
    layers = model.config.num_hidden_layers
    assert s["calls"] == 2 * layers, s
    if _has_family("attention_kv"):
        assert s["fallback"] == 0 and s["by_phase"]["prefill"]["served"] == 2 * layers, s


def test_a_noted_mask_changed_in_place_is_not_trusted():
    from transformers import AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    mask_function = AttentionMaskInterface()[fct.register()]
    q = torch.randn(1, 4, 4, 16, dtype=torch.float16, device=DEVICE)
    k, v = (torch.randn(1, 2, 12, 16, dtype=torch.float16, device=DEVICE) for _ in range(2))
    mask = mask_function(batch_size=1, q_length=4, kv_length=12, q_offset=8, kv_offset=0, device=DEVICE)
    assert mask is not None  # 4 queries after 8 cached tokens: sdpa's mask function builds it
    module = _Attention(2)
    for changed in (False, True):
        if changed:
            mask[..., 0] = False  # the mask is no longer what its note says
        fct.reset_stats()
        out, _ = fct.attention_forward(module, q, k, v, mask)
        ref, _ = sdpa_attention_forward(module, q, k, v, mask)
        torch.testing.assert_close(out, ref, atol=2e-3, rtol=1e-3)
        s = fct.stats()
        assert s["fallback"] == int(changed or not _has_family("attention_kv")), s


def test_a_mask_built_in_inference_mode_is_not_trusted():
    """An inference tensor has no version counter, so an in-place change could not be seen: sdpa runs it."""
    from transformers import AttentionMaskInterface

    q = torch.randn(1, 4, 4, 16, dtype=torch.float16, device=DEVICE)
    k = torch.randn(1, 2, 12, 16, dtype=torch.float16, device=DEVICE)
    with torch.inference_mode():
        mask = AttentionMaskInterface()[fct.register()](batch_size=1, q_length=4, kv_length=12, q_offset=8,
                                                        kv_offset=0, device=DEVICE)
        fct.attention_forward(_Attention(2), q, k, k, mask)
    assert fct.stats()["fallback_reasons"] == {"mask: an inference tensor (untracked)": 1}


def test_a_static_cache_serves_prefill_and_leaves_masked_decoding_to_sdpa():
    model = build("qwen2", torch.float16)
    prompt = torch.randint(3, 128, (1, 12), device=DEVICE)
    static = {"cache_implementation": "static", "disable_compile": True}
    expected = generate(model, "sdpa", prompt, 4, **static)
    fct.reset_stats()
    assert torch.equal(generate(model, fct.register(), prompt, 4, **static), expected)
    s = fct.stats()
    layers = model.config.num_hidden_layers
    assert s["by_phase"]["prefill"] == {"calls": layers, "served": layers}, s  # keys past the prompt sliced
    # each step's mask hides the cache slots not yet written: not plain causal over the max_cache_len keys
    assert s["by_phase"]["decode"] == {"calls": 3 * layers, "served": 0}, s
    assert s["fallback_reasons"] == {"mask: static cache (hides the cache slots not yet written)": 3 * layers}, s


def test_transformers_compiled_static_decoding_runs_fullgraph():
    model = build("llama-gqa", torch.float16)
    prompt = torch.randint(3, 128, (1, 12), device=DEVICE)
    expected = generate(model, "sdpa", prompt, 4, cache_implementation="static", disable_compile=True)
    compile_config = transformers.CompileConfig(backend="eager", fullgraph=True, mode=None)
    compile_config._compile_all_devices = True  # transformers compiles on GPUs only otherwise
    fct.reset_stats()
    tokens = generate(model, fct.register(), prompt, 4, cache_implementation="static", compile_config=compile_config)
    assert getattr(model, "_compiled_call", None) is not None  # transformers compiled the decoding steps
    assert torch.equal(tokens, expected)
    s = fct.stats()
    assert s["by_phase"]["decode"]["calls"] == 0 and s["by_phase"]["prefill"]["calls"] == 2, s  # compiled: uncounted


@pytest.mark.parametrize("phase", ["prefill", "static-decode", "chunk-over-cache"])
def test_dynamo_finds_no_graph_break_in_a_forward_through_it(phase):
    model = build("llama-gqa", torch.float16)
    fct.set_implementation(model, fct.register())
    kwargs = {"input_ids": torch.randint(3, 128, (1, 12), device=DEVICE), "use_cache": False}
    if phase != "prefill":
        cache = (transformers.StaticCache(config=model.config, max_cache_len=24) if phase == "static-decode"
                 else transformers.DynamicCache(config=model.config))
        kwargs.update({"use_cache": True, cache_keyword(model): cache})
        with torch.no_grad():
            model(**kwargs)
        kwargs["input_ids"] = kwargs["input_ids"][:, : 1 if phase == "static-decode" else 4]
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model.forward)(**kwargs)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def test_softcapped_attention_gives_eager_results_and_counts_why():
    # Gemma-2's attention logit softcapping (on, as in the real model): sdpa cannot compute it
    config = transformers.Gemma2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                       intermediate_size=128, num_hidden_layers=2, vocab_size=128,
                                       sliding_window=8, query_pre_attn_scalar=16)
    assert config.attn_logit_softcapping
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model = model.to(DEVICE, torch.bfloat16).eval()
    ids = torch.randint(0, 128, (2, 12), device=DEVICE)
    ref = logits(model, "eager", ids)
    out = logits(model, fct.register(), ids)  # set_implementation allows it: softcapping is its only sdpa gap
    torch.testing.assert_close(out, ref, atol=0, rtol=0)  # the model's own eager function, on the same mask
    assert fct.stats()["fallback_reasons"] == {"softcap (transformers' eager attention)": 2}


def test_set_implementation_refuses_a_model_without_sdpa():
    class NoSdpa(torch.nn.Module):
        _supports_sdpa = False

    with pytest.raises(ValueError, match="does not support sdpa"):
        fct.set_implementation(NoSdpa(), fct.register())
