"""`autotune bench --dtype fp8`: resolve the profile and grid, bench under a progress bar, print the table, write
the JSON and the PNG (the FP8 kernel, the tuned fp16 kernel and the SDPA backends; ``evaluation.bench_fp8``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from .backend import select_backend
from .bench import _escape, _num, _tf, check_outputs, with_progress, write_results
from .console import console as make_console
from ..tuning.grids import get_grid
from ..runtime.paths import resolve_db
from ..core.profiles import resolve_profile


def run_bench_fp8_cli(*, gpu: str, grid: str, db: Path | None, fp16_db: Path | None, dtype: str,
                      out: Path | None, plot: Path | None, rep_ms: int, seed: int = 0) -> None:
    """The body of `autotune bench --dtype fp8`: ``dtype`` is the resolved label ("fp8", "fp8-tol0.03")."""
    check_outputs(out, plot)
    profile = resolve_profile(gpu)
    points = get_grid(grid, dtype)
    select_backend(profile)  # before anything imports the kernels

    from ..evaluation.bench import CPU_TIMING
    from ..evaluation.bench_fp8 import run_bench_fp8

    path = resolve_db(db)
    fp16_path = resolve_db(fp16_db) if fp16_db else path
    console = make_console(stderr=True)
    from flashcore.cache import fp8_tol

    console.print(f"bench: profile [bold]{profile.name}[/], grid {grid}, {len(points)} points, {dtype} (FP8 error "
                  f"budget {fp8_tol(dtype):g}), rep {rep_ms} ms, FP8 cache {path}, fp16 cache {fp16_path}")
    result = with_progress(console, points, lambda on_point: run_bench_fp8(
        points, profile, db=path, fp16_db=fp16_path, rep_ms=rep_ms, seed=seed, on_point=on_point, grid=grid))

    make_console().print(fp8_table(result))
    for line in fp8_summary_lines(result):
        console.print(line)
    if result["provenance"].get("timing") == CPU_TIMING:
        console.print("[yellow]cpu: Triton's interpreter, wall time; these numbers say nothing about speed[/]")
    from ..evaluation.bench import plot_bench
    from ..evaluation.bench_fp8 import FP8_PROVIDERS

    def plot_fn(res: dict[str, Any], target: Path) -> None:
        plot_bench(res, target, FP8_PROVIDERS, "FP8 kernel vs tuned fp16 kernel and PyTorch SDPA")

    write_results(console, result, out, plot, plot_fn)


def fp8_table(result: dict[str, Any]) -> Group:
    """Two tables: per point the FP8 config's source and recipe, its time and errors; then TF/s (fp8 alone, with
    quantization, the tuned fp16 kernel, the best SDPA backend) and the ratios (every figure is in the JSON)."""
    from ..evaluation.bench import SDPA_BACKENDS

    prov = result["provenance"]
    rows = result["points"]
    config = Table(title=f"FP8 bench on {prov.get('gpu')} (budget {prov.get('fp8_tol')}): {prov.get('timing')}")
    config.add_column("point", no_wrap=True)
    for col in ("source fp8/fp16", "recipe", "fp8 µs", "rel err", "outliers", "cosine"):
        config.add_column(col, justify="left" if col in ("source fp8/fp16", "recipe") else "right")
    for r in rows:
        config.add_row(r["label"], f"{r['source']}/{r['tuned_source']}", r.get("recipe") or "-",
                       _num(r["fp8_us"], ".1f"), _num(r["fp8_rel_err"], ".2e"), _num(r["fp8_outlier_rel_err"], ".2e"),
                       _num(r["fp8_cosine"], ".5f"))
    speed = Table(title="TF/s, and the tuned fp16 kernel's time over FP8's (> 1: FP8 is faster)")
    speed.add_column("point", no_wrap=True)
    for col in ("fp8 TF/s", "e2e TF/s", "fp16 TF/s", "best SDPA TF/s", "fp16 / fp8", "fp16 / e2e"):
        speed.add_column(col, justify="right")
    for r in rows:
        sdpa = [r[f"{b}_tflops"] for b in SDPA_BACKENDS if r.get(f"{b}_tflops") is not None]
        speed.add_row(r["label"], *(_tf(r[f"{p}_tflops"]) for p in ("fp8", "fp8_e2e", "tuned")),
                      _tf(max(sdpa) if sdpa else None),
                      _num(r["tuned_over_fp8"], ".2f", "×"), _num(r["tuned_over_fp8_e2e"], ".2f", "×"))
    return Group(config, speed)


def fp8_summary_lines(result: dict[str, Any]) -> list[str]:
    """The geometric means, the worst errors, and each distinct reason a provider has no figures."""
    s = result["summary"]
    n = s["points"]
    lines = [
        f"geomean tuned fp16 / fp8: {_num(s['geomean_tuned_over_fp8'], '.3f', '×')} over {s['n_tuned_over_fp8']} "
        f"of {n} points (> 1: FP8 is faster)",
        f"geomean tuned fp16 / fp8_e2e (quantization included): {_num(s['geomean_tuned_over_fp8_e2e'], '.3f', '×')}"
        f" over {s['n_tuned_over_fp8_e2e']} of {n} points",
        f"geomean best SDPA / fp8: {_num(s['geomean_best_sdpa_over_fp8'], '.3f', '×')} over "
        f"{s['n_best_sdpa_over_fp8']} of {n} points",
        f"max fp8 rel err: {_num(s['max_fp8_rel_err'], '.2e')} (budget {result['provenance'].get('fp8_tol')}); "
        f"with outliers: {_num(s['max_fp8_outlier_rel_err'], '.2e')}; min cosine {_num(s['min_fp8_cosine'], '.5f')}",
        f"recipes: {', '.join(s['recipes']) or '-'}",
    ]
    reasons: dict[tuple[str, str], int] = {}
    for r in result["points"]:
        for provider, why in r["errors"].items():
            reasons[(provider, why)] = reasons.get((provider, why), 0) + 1
    for (provider, why), count in sorted(reasons.items()):
        lines.append(f"[yellow]{provider}[/] at {count} point(s): {_escape(why)}")
    return lines
