"""The FP8 E4M3 attention kernel: JIT code (``kernel``), launcher (``launch``), quantization recipes (``quant``) and
their Triton quantizer (``quant_fused``, ``quant_launch``), the PyTorch emulation (``reference``), ahead-of-time
compile (``precompile``)."""
