"""attention_kv: unequal lengths, grouped-query heads packed per kv head, split-KV.

The declaration that makes this folder a family (kernels/README.md says what a family folder holds).
"""

from flashcore.cache import HALF_DTYPES

from .._family import KernelFamily

# Unequal lengths (KV-cache decode, chunked prefill), grouped-query heads packed per kv head, split-KV.
FAMILY = KernelFamily(
    name="attention_kv",
    launcher="attention_kv.launch:attention_kv",
    checker="attention_kv.launch:check_config",
    reference="reference:attention_reference",  # the one shared fp32 reference (kernels/reference.py)
    space="attention_kv",
    dtypes=HALF_DTYPES,
    jit=("attention_kv/kernel.py:attn_kv_fwd", "attention_kv/kernel.py:attn_kv_combine"),
    lengths="any",
    precompiler="attention_kv.launch:precompile",
    compile_key="attention_kv.launch:compile_key",
    server="attention_kv.fastlaunch:KvServer",
    rules="attention_kv.rules",
    default=True,
)
