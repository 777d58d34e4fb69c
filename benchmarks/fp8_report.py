"""FP8 tables for the README, with figures only from files a run wrote.

  python3 benchmarks/fp8_report.py recipes --db FP8.db [--fp16-db FP16.db] [--point 8,16,4096,128]
          [--gpu auto] [--rep-ms 25] --out recipes.json
      measures every recipe of the FP8 search space at one point (needs the GPU it reports on): the kernel alone
      and with its quantization (median µs, TF/s), and its relative L2 error against fp32 on seeded N(0, 1)
      inputs and on the same inputs with 8 values per tensor made 100x larger; with the tuned fp16 kernel on the
      same inputs as the last row. Each recipe runs with the tiles of its fastest passing sweep trial at that
      point in FP8.db (any budget), else the FP8 winner's, else the space default's. Writes JSON, prints the table.
  python3 benchmarks/fp8_report.py table recipes.json      the per-recipe Markdown table of that JSON
  python3 benchmarks/fp8_report.py bench bench-fp8.json [bench-fp8-tol0.03.json ...]
      the per-point Markdown table of `autotune bench --dtype fp8 --out` files
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path



NORMAL = "N(0,1), seeded"


def _f(x, fmt=".1f"):
    return "-" if x is None else f"{x:{fmt}}"


def measure_recipes(db: str, fp16_db: str | None, shape: tuple[int, ...], causal: bool, gpu: str, rep_ms: int,
                    seed: int = 0) -> dict:
    """The per-recipe figures at one point (see the module docstring), as a JSON-ready dict."""
    from flashcore.autotune import Point, resolve_profile
    from flashcore.autotune.cli.backend import select_backend

    profile = resolve_profile(gpu)
    select_backend(profile)
    import torch

    from flashcore.autotune.evaluation.bench_fp8 import fp8_figures
    from flashcore.autotune.runtime.dispatch import get_kernel
    from flashcore.kernels.attention_fp8.gate import cosine, rel_l2
    from flashcore.kernels.attention_fp8.trial import OUTLIER_FACTOR, OUTLIERS, with_outliers
    from flashcore.autotune.core.profiles import device_identity
    from flashcore.autotune.tuning.timing import measure
    from flashcore.autotune.core.toolchain import provenance
    from flashcore.cache import CacheStore
    from flashcore.kernels import KernelError, get_family
    from flashcore.kernels.attention_fp8.quant import Recipe
    from flashcore.kernels.reference import attention_reference
    from flashcore.kernels import load_space

    gpu_name, cc = device_identity(profile)
    point = Point(*shape, causal, "fp8-tol1")  # the loosest budget: every recipe of the space is valid
    space = load_space("attention_fp8", profile.name)
    candidates = space.candidates(point, profile)
    recipes = list(dict.fromkeys(Recipe.from_config(c) for c in candidates))
    trials = _passing_trials(CacheStore, db, get_family("attention_fp8").source_hash, gpu_name, point)
    winner = get_kernel(shape, "fp8", causal, gpu=gpu_name, db=db, kernel="attention_fp8")
    cuda = not profile.interpreter
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen).to("cuda" if cuda else "cpu", torch.float16) for _ in range(3))
    ref = attention_reference(q, k, v, causal=causal)
    rows = []
    for recipe in recipes:
        mine = [c for c in candidates if Recipe.from_config(c) == recipe]
        config, tiles_from = _tiles(mine, trials.get(recipe), winner)
        row = {"recipe": recipe.label, "config": config, "tiles_from": tiles_from}
        try:
            figures, errors = fp8_figures(point, config, q, k, v, ref, tol=1.0, cuda=cuda, rep_ms=rep_ms, seed=seed)
            row.update(figures, errors=errors)
        except KernelError as exc:
            row["errors"] = {"fp8": f"{exc.kind}: {exc}"}
        rows.append(row)
    tuned = get_kernel(shape, torch.float16, causal, gpu=gpu_name, db=fp16_db or db)
    launch = get_family("attention_fwd").launch()
    out = launch(q, k, v, tuned.config, causal=causal)
    timing = measure(lambda: launch(q, k, v, tuned.config, causal=causal), cuda=cuda, rep_ms=rep_ms)
    qo, ko, vo = with_outliers(q, k, v, seed)
    out_o, ref_o = launch(qo, ko, vo, tuned.config, causal=causal), attention_reference(qo, ko, vo, causal=causal)
    fp16 = {"config": tuned.config, "source": tuned.source, "us": timing.median_us,
            "tflops": point.flops / (timing.median_us * 1e-6) / 1e12, "rel_err": rel_l2(out, ref),
            "cosine": cosine(out, ref), "outlier_rel_err": rel_l2(out_o, ref_o)}
    prov = dict(provenance(gpu_name, cc), profile=profile.name, point=dataclasses.replace(point, dtype="fp8").label,
                inputs=NORMAL, outliers=f"{OUTLIERS} values per tensor x{OUTLIER_FACTOR:g}", rep_ms=rep_ms,
                timing=timing.method)
    return {"provenance": prov, "recipes": rows, "fp16_tuned": fp16}


def _passing_trials(store_cls, db: str, kernel_hash: str, gpu_name: str, point) -> dict:
    """Recipe -> config of its fastest passing FP8 trial at ``point``'s shape in ``db`` (any budget)."""
    from flashcore.kernels.attention_fp8.quant import Recipe

    if not Path(db).exists():
        return {}
    best: dict = {}
    with store_cls.open(db) as store:
        for t in store.trials():
            k = t.key
            if (k.kernel, k.kernel_hash, k.gpu, k.causal, k.batch, k.heads, k.seq_len, k.head_dim) != (
                    "attention_fp8", kernel_hash, gpu_name, point.causal, point.batch, point.heads, point.seq_len,
                    point.head_dim) or t.status != "ok" or t.median_us is None:
                continue
            recipe = Recipe.from_config(t.config).canonical()
            if recipe not in best or t.median_us < best[recipe][0]:
                best[recipe] = (t.median_us, dict(t.config))
    return {r: c for r, (_, c) in best.items()}


def _tiles(mine: list[dict], trial: dict | None, winner) -> tuple[dict, str]:
    if trial is not None:
        return trial, "sweep trial"
    tiles = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "CAUSAL_SPLIT")
    for c in mine:
        if all(c.get(t) == winner.config.get(t) for t in tiles):
            return c, f"FP8 winner ({winner.source})"
    return mine[0], "first valid config"


def recipes_table(data: dict) -> str:
    p = data["provenance"]
    lines = [f"{p['gpu']}, torch {p['torch']}, triton {p['triton']}, commit {p['commit'][:7]}, {p['date'][:10]}; "
             f"{p['point']}; inputs {p['inputs']}, outliers: {p['outliers']}; timing {p['timing']}, "
             f"rep {p['rep_ms']} ms", "",
             "| recipe | tiles | fp8 µs | fp8 TF/s | fp8 + quantization µs | TF/s | rel L2 N(0,1) | rel L2 outliers "
             "| cosine |", "|---|---|---|---|---|---|---|---|---|"]
    for r in data["recipes"]:
        c = r["config"]
        tiles = f"M{c['BLOCK_M']} N{c['BLOCK_N']} w{c['num_warps']} s{c['num_stages']}"
        lines.append(f"| {r['recipe']} | {tiles} | {_f(r.get('fp8_us'))} | {_f(r.get('fp8_tflops'), '.0f')} "
                     f"| {_f(r.get('fp8_e2e_us'))} | {_f(r.get('fp8_e2e_tflops'), '.0f')} "
                     f"| {_f(r.get('fp8_rel_err'), '.2e')} | {_f(r.get('fp8_outlier_rel_err'), '.2e')} "
                     f"| {_f(r.get('fp8_cosine'), '.5f')} |")
    t = data["fp16_tuned"]
    lines.append(f"| fp16 tuned ({t['source']}) | - | {_f(t['us'])} | {_f(t['tflops'], '.0f')} | - | - "
                 f"| {_f(t['rel_err'], '.2e')} | {_f(t['outlier_rel_err'], '.2e')} | {_f(t['cosine'], '.5f')} |")
    return "\n".join(lines)


def bench_table(files: list[str]) -> str:
    lines = []
    for name in files:
        data = json.loads(Path(name).read_text())
        p, s = data["provenance"], data["summary"]
        lines += [f"{p['gpu']}, torch {p['torch']}, triton {p['triton']}, commit {p['commit'][:7]}, {p['date'][:10]}; "
                  f"grid {p['grid']}, {p['dtype']} (budget {p['fp8_tol']}), rep {p['rep_ms']} ms", "",
                  "| B | H | S | D | causal | source | recipe | fp8 µs | fp8 TF/s | fp8 e2e TF/s | fp16 tuned TF/s "
                  "| cuDNN TF/s | fp16 / fp8 | fp16 / fp8 e2e | rel L2 | rel L2 outliers |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in data["points"]:
            lines.append(
                f"| {r['batch']} | {r['heads']} | {r['seq_len']} | {r['head_dim']} | {'yes' if r['causal'] else 'no'} "
                f"| {r['source']} | {r['recipe'] or '-'} | {_f(r['fp8_us'])} | {_f(r['fp8_tflops'], '.0f')} "
                f"| {_f(r['fp8_e2e_tflops'], '.0f')} | {_f(r['tuned_tflops'], '.0f')} | {_f(r['cudnn_tflops'], '.0f')} "
                f"| {_f(r['tuned_over_fp8'], '.2f')} | {_f(r['tuned_over_fp8_e2e'], '.2f')} "
                f"| {_f(r['fp8_rel_err'], '.2e')} | {_f(r['fp8_outlier_rel_err'], '.2e')} |")
        lines += ["", f"Geometric means over {s['points']} points: fp16 tuned / fp8 "
                  f"**{_f(s['geomean_tuned_over_fp8'], '.3f')}**, fp16 tuned / fp8 e2e "
                  f"**{_f(s['geomean_tuned_over_fp8_e2e'], '.3f')}**; max FP8 relative L2 "
                  f"{_f(s['max_fp8_rel_err'], '.2e')} (outliers {_f(s['max_fp8_outlier_rel_err'], '.2e')}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("recipes", help="measure every recipe at one point; write JSON; print the table")
    m.add_argument("--db", required=True)
    m.add_argument("--fp16-db")
    m.add_argument("--point", default="8,16,4096,128", help="B,H,S,D[,causal]")
    m.add_argument("--gpu", default="auto")
    m.add_argument("--rep-ms", type=int, default=25)
    m.add_argument("--out")
    sub.add_parser("table", help="render a recipes JSON").add_argument("file")
    sub.add_parser("bench", help="render FP8 bench JSONs").add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    if args.cmd == "recipes":
        parts = args.point.split(",")
        if len(parts) not in (4, 5) or not all(x.isdigit() and int(x) > 0 for x in parts[:4]) or \
                (len(parts) == 5 and parts[4] not in ("causal", "full")):
            parser.error(f"--point must be B,H,S,D or B,H,S,D,causal|full; got {args.point!r}")
        data = measure_recipes(args.db, args.fp16_db, tuple(int(x) for x in parts[:4]),
                               len(parts) == 5 and parts[4] == "causal", args.gpu, args.rep_ms)
        if args.out:
            from flashcore.autotune.cli.bench import strict_json

            Path(args.out).write_text(json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n")
        print(recipes_table(data))
    elif args.cmd == "table":
        print(recipes_table(json.loads(Path(args.file).read_text())))
    else:
        print(bench_table(args.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
