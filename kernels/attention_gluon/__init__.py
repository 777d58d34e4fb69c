"""Warp-specialized Hopper (sm_90) attention forward in Gluon: kernel.py (Gluon code), launch.py (launcher),
compile.py (compile for sm_90 without a GPU), rules.py (config schema and validity rules), space.toml (search space),
smoke.py (GPU smoke script). Importing this package imports neither torch nor Triton."""
