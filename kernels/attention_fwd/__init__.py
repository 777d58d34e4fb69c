"""The FlashAttention-style Triton forward kernel: JIT code (``kernel``), launcher (``launch``), fast launch path
(``fastlaunch``), ahead-of-time compile (``precompile``). Its fp32 reference is ``kernels/reference.py``."""
