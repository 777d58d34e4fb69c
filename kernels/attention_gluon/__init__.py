"""Warp-specialized Hopper (sm_90) attention forward in Gluon: kernel.py (Gluon code), launch.py (launcher),
config.py (config schema and resource model), compile.py (compile for sm_90 without a GPU). Its search space is
search_spaces/attention_gluon.toml with the rules of search_spaces/rules_gluon.py; benchmarks/gluon_smoke.py is
its GPU smoke script. Importing this package imports neither torch nor Triton."""
