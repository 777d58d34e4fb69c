"""attention_kv: attention with L != S, grouped-query heads (optionally packed per kv head) and split-KV.

The kernel for KV-cache decode and chunked prefill. ``launch.attention_kv`` is the launcher,
``kernels/reference.py`` (shared by every family) the fp32 truth; its search space is kernels/attention_kv/space.toml with the
rules of kernels/attention_kv/rules.py; NOTES.md has the design. Importing this package imports neither Triton nor
the kernels.
"""
