"""`autotune bench`: resolve the profile and grid, bench under a progress bar, print the table, write files."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._backend import select_backend
from ._console import console as make_console
from ._grids import format_config, get_grid
from ._paths import resolve_db
from ._profiles import resolve_profile


def run_bench_cli(*, gpu: str, grid: str, db: Path | None, dtype: str, out: Path | None, plot: Path | None,
                  rep_ms: int, seed: int = 0) -> None:
    """The body of `autotune bench`: everything but the typer signature."""
    from ._inputs import torch_dtype

    torch_dtype(dtype)
    profile = resolve_profile(gpu)
    points = get_grid(grid, dtype)
    select_backend(profile)  # before anything imports the kernels

    from ._bench import CPU_TIMING, run_bench

    path = resolve_db(db)
    console = make_console(stderr=True)
    console.print(f"bench: profile [bold]{profile.name}[/], grid {grid}, {len(points)} points, {dtype}, "
                  f"rep {rep_ms} ms, cache {path}")
    result = with_progress(console, points, lambda on_point: run_bench(
        points, profile, db=path, rep_ms=rep_ms, seed=seed, on_point=on_point, grid=grid))

    make_console().print(bench_table(result))
    for line in summary_lines(result):
        console.print(line)
    if result["provenance"].get("timing") == CPU_TIMING:
        console.print("[yellow]cpu: Triton's interpreter, wall time; these numbers say nothing about speed[/]")
    from ._bench import plot_bench

    write_results(console, result, out, plot, plot_bench)


def bench_table(result: dict[str, Any]) -> Table:
    """The rich table: per point, the tuned kernel's time and config source, TF/s per provider, the ratios."""
    prov = result["provenance"]
    table = Table(title=f"bench on {prov.get('gpu')}: {prov.get('timing')}")
    for col in ("point", "source", "config", "tuned µs", "tuned TF/s", "flash TF/s", "cudnn TF/s",
                "efficient TF/s", "best SDPA / tuned", "flash / tuned", "tuned rel err"):
        table.add_column(col, justify="left" if col in ("point", "source", "config") else "right")
    for r in result["points"]:
        table.add_row(r["label"], r["source"], format_config(r["config"]), _num(r["tuned_us"], ".1f"),
                      *(_tf(r[f"{p}_tflops"]) for p in ("tuned", "flash", "cudnn", "efficient")),
                      _num(r["best_sdpa_over_tuned"], ".2f", "×"), _num(r["flash_over_tuned"], ".2f", "×"),
                      _num(r["tuned_rel_err"], ".1e"))
    return table


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The summary, and each distinct reason a provider has no figures, with how many points it covers."""
    s = result["summary"]
    lines = [
        f"geomean best SDPA / tuned: {_num(s['geomean_best_sdpa_over_tuned'], '.3f', '×')} over "
        f"{s['n_best_sdpa_over_tuned']} of {s['points']} points (> 1: the tuned kernel is faster)",
        f"geomean flash / tuned: {_num(s['geomean_flash_over_tuned'], '.3f', '×')} over "
        f"{s['n_flash_over_tuned']} of {s['points']} points",
        f"max tuned rel err: {_num(s['max_tuned_rel_err'], '.2e')}",
    ]
    reasons: dict[tuple[str, str], int] = {}
    for r in result["points"]:
        for provider, why in r["errors"].items():
            reasons[(provider, why)] = reasons.get((provider, why), 0) + 1
    for (provider, why), n in sorted(reasons.items()):
        lines.append(f"[yellow]{provider}[/] at {n} point(s): {_escape(why)}")
    return lines


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float made None, so that the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _tf(x: float | None) -> str:
    return _num(x, ".1f" if x is None or x >= 0.1 else ".1e")


def _num(x: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if x is None else f"{x:{fmt}}{suffix}"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def with_progress(console, points: list, run: Callable[[Callable], dict[str, Any]]) -> dict[str, Any]:
    """``run(on_point)`` under a progress bar that names the point being benched."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task(points[0].label if points else "points", total=len(points))
        done = [0]

        def on_point(point, row) -> None:
            done[0] += 1
            nxt = points[done[0]].label if done[0] < len(points) else "done"
            progress.update(task, advance=1, description=nxt)

        return run(on_point)


def write_results(console, result: dict[str, Any], out: Path | None, plot: Path | None,
                  plot_fn: Callable[[dict[str, Any], Path], None]) -> None:
    """Write ``result`` as JSON to ``out`` and its plot to ``plot`` (each atomically, each optional)."""
    if out is not None:
        text = json.dumps(_finite(result), indent=2, allow_nan=False) + "\n"
        _atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        console.print(f"wrote {out}")
    if plot is not None:
        _atomic_write(plot, lambda tmp: plot_fn(result, tmp))
        console.print(f"wrote {plot}")


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temp file in its folder, renamed over it only once complete."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it the mode a plain open() would
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
