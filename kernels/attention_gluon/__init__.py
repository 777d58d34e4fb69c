"""Warp-specialized Hopper (sm_90) attention forward in Gluon: kernel.py (Gluon code), launch.py (launcher),
config.py (config schema and resource model), compile.py (compile for sm_90 without a GPU). Its search space is
kernels/attention_gluon/space.toml with the rules of kernels/attention_gluon/rules.py; benchmarks/gluon_smoke.py is
its GPU smoke script. Importing this package imports neither torch nor Triton."""
