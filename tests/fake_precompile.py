"""A planted precompiler for compile-pool tests: logs every compile to $FAKE_PRECOMPILE_LOG, rejects
BLOCK_N == 16 like a compiler error, raises a plain bug on num_stages == 7, and kills its process on
BLOCK_M == 64 with BLOCK_N == 64 (a compiler crash). Its compile key (``key``) makes two points of one head dim
and mask share every compiled kernel."""

import json
import os

from flashcore.kernels import KernelCompileError

CRASH = {"BLOCK_M": 64, "BLOCK_N": 64}


def precompile(shape, kv_shape, dtype, causal, config, lower_right=False):
    with open(os.environ["FAKE_PRECOMPILE_LOG"], "a") as fh:
        fh.write(json.dumps({"shape": list(shape), "causal": causal, "config": config}, sort_keys=True) + "\n")
    if config.get("BLOCK_N") == 16:
        raise KernelCompileError("CompilationError: planted by fake_precompile")
    if config.get("num_stages") == 7:
        raise ZeroDivisionError("planted bug in the precompiler")
    if all(config.get(k) == v for k, v in CRASH.items()):
        os._exit(3)
    return True


def key(shape, kv_shape, dtype, causal, config, lower_right=False):
    return (shape[-1], str(dtype), bool(causal), tuple(sorted(config.items())))

