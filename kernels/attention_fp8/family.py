"""The FP8 E4M3 attention kernel.

The declaration that makes this folder a family (kernels/README.md says what a family folder holds).
"""

from .._family import KernelFamily

# FP8 E4M3 (attention_fp8/quant.py recipes; the launcher takes 16-bit q, k, v and quantizes them per the config).
# Its trials need the FP8 gate (gate.py beside this file, through the trial hooks of trial.py), not the fp16 one.
FAMILY = KernelFamily(
    name="attention_fp8",
    launcher="attention_fp8.launch:attention_fp8",
    checker="attention_fp8.launch:check_config",
    reference="reference:attention_reference",
    space="attention_fp8",
    dtypes=("fp8",),
    jit=("attention_fp8/kernel.py:attn_fwd_fp8", "attention_fp8/quant_fused.py:block_amax",
         "attention_fp8/quant_fused.py:cast_fp8"),
    # the whole-file hash of the FP8 kernel's five files at f99307b (the shipped H100 FP8 table)
    legacy_hashes=(("3daa245e753428e7", "abe7fbeb24a6a805"),),
    gqa=False,
    precompiler="attention_fp8.precompile:precompile",
    compile_key="attention_fp8.precompile:compile_key",
    server="attention_fp8.quant_launch:fused_launcher",
    rules="attention_fp8.rules",
    trial="attention_fp8.trial:HOOKS",
)
