"""Where the host time of a served call goes, piece by piece, on the GPU: `python3 benchmarks/probe_host.py --out F`.

For the decode point of benchmarks/overhead.py (B1 H32/8, one query over 2300 keys, bf16) and the backend point
(B5 H7 S777 D64 causal fp16): SDPA as the user calls it, SDPA with one backend switched on alone (the switches
read, set and restored), each backend's own aten op called directly (with a bit-for-bit check against the
switched call), ``torch._fused_sdp_choice`` (what SDPA would pick), and for attention_kv's served launch its
pieces (the arguments, their specialization classes, one Triton launch with them ready, the whole server),
plus a cProfile of the whole server. Host µs per call, as benchmarks/overhead.py measures them. A probe for
deciding the served path, not a claim: the claims are overhead.py's.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
from pathlib import Path

import torch
import torch.nn.functional as F

from flashcore.autotune.core.toolchain import provenance
from flashcore.kernels import backends
from flashcore.kernels.fastrun import arg_class
from flashcore.kernels.attention_kv.fastlaunch import KvServer

from overhead import host_us  # noqa: E402  (benchmarks/ is the script's folder)

CONFIG = {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 2, "num_stages": 2, "NUM_SPLITS": 16, "PACK_GQA": True}


def sdpa_pieces(q, k, v, causal: bool) -> dict:
    gqa = k.shape[1] != q.shape[1]
    out: dict = {"sdpa": host_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa))}
    choice = lambda: torch._fused_sdp_choice(q, k, v, None, 0.0, causal, scale=None, enable_gqa=gqa)  # noqa: E731
    out["fused_sdp_choice"] = host_us(choice)
    out["sdp_choice_value"] = int(choice())
    direct = {
        "cudnn": lambda: torch._scaled_dot_product_cudnn_attention(q, k, v, None, False, 0.0, causal, False)[0],
        "flash": lambda: torch._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False)[0],
    }
    for name, flag in (("cudnn", "cudnn"), ("flash", "flash")):
        server = backends.BackendServer(flag, causal)
        try:
            ref = server(q, k, v)
            out[f"switched_{name}"] = host_us(lambda: server(q, k, v))
        except RuntimeError as exc:
            out[f"switched_{name}"] = f"refused: {str(exc)[:100]}"
            continue
        try:
            got = direct[name]()
            out[f"direct_{name}_equal"] = bool(torch.equal(got, ref))
            out[f"direct_{name}"] = host_us(direct[name])
        except RuntimeError as exc:
            out[f"direct_{name}"] = f"refused: {str(exc)[:100]}"
    return out


def kv_pieces(q, k, v) -> dict:
    server = KvServer(CONFIG, False)
    from flashcore.kernels.attention_kv import fastlaunch as fl

    out = {"server_run": host_us(lambda: server.run(q, k, v)), "server_checked": host_us(lambda: server(q, k, v))}
    o = torch.empty_like(q)
    args = (q, k, v, o, o, o, 0.1, *q.stride(), *k.stride(), *v.stride(), *o.stride(), *(0,) * 9, 8, 4, 2300, 0, 4)
    out["empty"] = host_us(lambda: torch.empty(q.shape, dtype=q.dtype, device=q.device))
    out["arg_classes"] = host_us(lambda: tuple(map(arg_class, args)))
    meta, meta_id = server._meta(q.shape[3], True, q.dtype)
    run_entry = next(iter(fl._FWD._cache.values()))
    run, function, packed, tail, _ = run_entry
    from triton.runtime.driver import driver

    stream = driver.active.get_current_stream(driver.active.get_current_device())
    work = torch.empty(16 * 32 * 129, dtype=torch.float32, device="cuda")
    full = (q, k, v, o, work, work[16 * 32 * 128:], 0.1, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
            32 * 128, 32 * 128, 128, 128, 1, 32, 32, 1, 1, 8, 4, 2300, 0, 4)
    out["triton_launch_only"] = host_us(lambda: run(1, 8, 16, stream, function, packed, None, None, None, *full,
                                                    *tail))
    out["device_and_stream"] = host_us(lambda: driver.active.get_current_stream(driver.active.get_current_device()))
    from triton import knobs

    out["knob_reads"] = host_us(lambda: (knobs.runtime.debug, knobs.compilation.instrumentation_mode,
                                         knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2000):
        server.run(q, k, v)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(18)
    out["profile"] = text.getvalue()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    dec = [torch.randn(1, h, s, 128, device="cuda", dtype=torch.bfloat16) for h, s in ((32, 1), (8, 2300), (8, 2300))]
    mha = [torch.randn(5, 7, 777, 64, device="cuda", dtype=torch.float16) for _ in range(3)]
    result = {"provenance": provenance(torch.cuda.get_device_name(), "%d.%d" % torch.cuda.get_device_capability()),
              "decode_sdpa": sdpa_pieces(*dec, False), "backend_point_sdpa": sdpa_pieces(*mha, True),
              "decode_kv": kv_pieces(*dec)}
    profile = result["decode_kv"].pop("profile")
    text = json.dumps(result, indent=2)
    print(text)
    print(profile)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".profile.txt").write_text(profile)


if __name__ == "__main__":
    main()
