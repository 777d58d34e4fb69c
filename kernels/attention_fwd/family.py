"""The FlashAttention-style Triton forward kernel (the default family).

The declaration that makes this folder a family (kernels/README.md says what a family folder holds).
"""

from flashcore.cache import HALF_DTYPES

from .._family import KernelFamily

FAMILY = KernelFamily(
    name="attention_fwd",
    launcher="attention_fwd.launch:attention_fwd",
    checker="attention_fwd.launch:check_config",
    reference="reference:attention_reference",
    space="attention_fwd",
    dtypes=HALF_DTYPES,
    jit=("attention_fwd/kernel.py:attn_fwd",),
    gqa_jit=("attention_fwd/kernel.py:attn_fwd_gqa",),
    # the whole-file hash of the kernel file + launch.py at f99307b (the shipped H100 fp16 table), the files that are
    # now kernels/attention_fwd/kernel.py and kernels/attention_fwd/launch.py
    legacy_hashes=(("a5c27be1af7945f5", "5aa1c00278e1c071"),),
    precompiler="attention_fwd.precompile:precompile",
    compile_key="attention_fwd.precompile:compile_key",
    server="attention_fwd.fastlaunch:FastLauncher",
    rules="attention_fwd.rules",
    default=True,
)
