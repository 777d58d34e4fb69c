"""The warp-specialized Hopper kernel in Gluon.

The declaration that makes this folder a family (kernels/README.md says what a family folder holds).
"""

from flashcore.cache import HALF_DTYPES

from .._family import KernelFamily

# Warp-specialized Hopper kernel in Gluon (TMA producer warp, wgmma consumer warpgroups): sm_90 only.
FAMILY = KernelFamily(
    name="attention_gluon",
    launcher="attention_gluon.launch:attention_gluon",
    checker="attention_gluon.launch:check_config",
    reference="reference:attention_reference",
    space="attention_gluon",
    dtypes=HALF_DTYPES,
    jit=("attention_gluon/kernel.py:attn_fwd_ws",),
    needs=("wgmma", "tma", "warp_specialize"),
    server="attention_gluon.launch:GluonServer",
    rules="attention_gluon.rules",
)
