"""TEST ONLY: the declaration of the fault-injection family (tests/fault_injection.py has its launcher).

``kernels._family.get_family`` serves it only while FLASHCORE_FAULT_INJECTION=1 (FAULT_INJECTION_FAMILY names
this module); it searches attention_fwd's space and hashes its JIT source.
"""

from flashcore.kernels import KernelFamily

FAMILY = KernelFamily(
    name="attention_fwd_faulty",
    launcher="fault_injection:attention_fwd_faulty",
    checker="attention_fwd.launch:check_config",
    reference="reference:attention_reference",
    space="attention_fwd",
    dtypes=("float16", "bfloat16"),
    jit=("attention_fwd/kernel.py:attn_fwd",),
)
