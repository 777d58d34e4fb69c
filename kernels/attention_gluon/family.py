"""The warp-specialized Hopper kernel in Gluon: its declaration.

The one statement that makes this folder a family (``kernels._family.FAMILY_FOLDERS`` lists the folder): what the
tuner and the runtime need to know, every module named relative to ``flashcore.kernels``. Importing it imports
neither torch nor Triton.
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
