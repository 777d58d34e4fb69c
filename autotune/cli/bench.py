"""`autotune bench`: resolve the profile and grid, bench under a progress bar, print the table, write files."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .backend import select_backend
from .console import console as make_console
from ..core.errors import AutotuneError
from ..core.numbers import finite
from ..core.problem import format_config
from ..tuning.grids import get_grid
from ..runtime.paths import resolve_db
from ..core.profiles import resolve_profile


def run_bench_cli(*, gpu: str, grid: str, db: Path | None, dtype: str | None, out: Path | None,
                  plot: Path | None, rep_ms: int, seed: int = 0, kernel: str | None = None) -> None:
    """The body of `autotune bench`: everything but the typer signature."""
    from ..core.problem import torch_dtype

    check_outputs(out, plot)
    if dtype is not None:
        torch_dtype(dtype)
    profile = resolve_profile(gpu)
    points = get_grid(grid, dtype)
    select_backend(profile)  # before anything imports the kernels

    from ..evaluation.bench import CPU_TIMING, run_bench

    path = resolve_db(db)
    console = make_console(stderr=True)
    console.print(f"bench: profile [bold]{profile.name}[/], grid {grid}, {len(points)} points, "
                  f"{dtype or 'the grid dtypes'}, rep {rep_ms} ms, cache {path}")
    partial = None if out is None else (lambda res: write_results(None, res, out, None, None))
    result = with_progress(console, points, lambda on_point: run_bench(
        points, profile, db=path, rep_ms=rep_ms, seed=seed, on_point=on_point, grid=grid, kernel=kernel,
        on_partial=partial))

    make_console().print(bench_table(result))
    for line in summary_lines(result):
        console.print(line)
    if result["provenance"].get("timing") == CPU_TIMING:
        console.print("[yellow]cpu: Triton's interpreter, wall time; these numbers say nothing about speed[/]")
    from ..evaluation.bench import plot_bench

    write_results(console, result, out, plot, plot_bench)


def bench_table(result: dict[str, Any]) -> Group:
    """Two tables, each narrow enough to read: per point, our own best kernel and what is served (candidate,
    config, source, time, error); then TF/s per provider and the ratios. Point labels are never cut."""
    prov = result["provenance"]
    rows = result["points"]
    who = Table(title=f"bench on {prov.get('gpu')}: {prov.get('timing')}")
    who.add_column("point", no_wrap=True)
    for col in ("own", "own µs", "served", "served µs", "own rel err"):
        who.add_column(col, justify="right" if "µs" in col or "err" in col else "left",
                       no_wrap="µs" in col or "err" in col)
    for r in rows:
        who.add_row(r["label"], _candidate(r, "own"), _num(r["own_us"], ".1f"), _candidate(r, "served"),
                    _num(r["served_us"], ".1f"), _num(r["own_rel_err"], ".1e"))
    speed = Table(title="TF/s per provider, and the best SDPA backend's time over ours (> 1: ours is faster)")
    speed.add_column("point", no_wrap=True)
    for col in ("own", "served", "flash", "cudnn", "efficient", "best SDPA / own", "best SDPA / served"):
        speed.add_column(col, justify="right")
    for r in rows:
        speed.add_row(r["label"], *(_tf(r[f"{p}_tflops"]) for p in ("own", "served", "flash", "cudnn", "efficient")),
                      _num(r["best_sdpa_over_own"], ".2f", "×"), _num(r["best_sdpa_over_served"], ".2f", "×"))
    return Group(who, speed)


def _candidate(row: dict[str, Any], which: str) -> str:
    return _escape(f"{row[f'{which}_kernel']} [{format_config(row[f'{which}_config'])}] ({row[f'{which}_source']})")


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The summary, and each distinct reason a provider has no figures, with how many points it covers."""
    s = result["summary"]
    lines = [
        f"geomean best SDPA / own: {_num(s['geomean_best_sdpa_over_own'], '.3f', '×')} over "
        f"{s['n_best_sdpa_over_own']} of {s['points']} points (> 1: our kernels are faster; min "
        f"{_num(s['min_best_sdpa_over_own'], '.2f', '×')})",
        f"geomean best SDPA / served: {_num(s['geomean_best_sdpa_over_served'], '.3f', '×')} over "
        f"{s['n_best_sdpa_over_served']} of {s['points']} points (min {_num(s['min_best_sdpa_over_served'], '.2f', '×')}"
        f"; a backend serves {s['served_by_backend']} point(s))",
        f"geomean cuDNN / own: {_num(s['geomean_cudnn_over_own'], '.3f', '×')}, flash / own: "
        f"{_num(s['geomean_flash_over_own'], '.3f', '×')}",
        f"max rel err: own {_num(s['max_own_rel_err'], '.2e')}, served {_num(s['max_served_rel_err'], '.2e')}",
    ]
    if s.get("geomean_own_floor") is not None or s.get("geomean_cudnn_floor") is not None:
        lines.append(f"K/V read rate / copy rate (KV-cache points): own {_num(s.get('geomean_own_floor'), '.0%')} "
                     f"geomean (min {_num(s.get('min_own_floor'), '.0%')}; B1 KV >= 32K min "
                     f"{_num(s.get('min_own_floor_b1_kv32k'), '.0%')}), cuDNN "
                     f"{_num(s.get('geomean_cudnn_floor'), '.0%')}")
    reasons: dict[tuple[str, str], int] = {}
    for r in result["points"]:
        for provider, why in r["errors"].items():
            reasons[(provider, why)] = reasons.get((provider, why), 0) + 1
    for (provider, why), n in sorted(reasons.items()):
        lines.append(f"[yellow]{provider}[/] at {n} point(s): {_escape(why)}")
    return lines


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float made None, so that the JSON is strict."""
    if isinstance(obj, float):
        return finite(obj)
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
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


def check_outputs(*paths: Path | None) -> None:
    """Refuse, before anything runs, an output file (``--out``, ``--plot``) that is a folder or whose folder does
    not exist: FlashCore creates folders only for its default cache location."""
    for path in paths:
        if path is None:
            continue
        path = Path(path).expanduser()
        if path.is_dir():
            raise AutotuneError(f"{path} is a directory; give a file name")
        if not path.parent.is_dir():
            raise AutotuneError(f"the folder {path.parent} of {path} does not exist")


def with_null_provenance(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with provenance values that say "None" (``torch.version.cuda`` of a CPU build) as JSON null."""
    prov = result.get("provenance")
    if not isinstance(prov, dict):
        return result
    return {**result, "provenance": {k: None if v == "None" else v for k, v in prov.items()}}


def write_results(console, result: dict[str, Any], out: Path | None, plot: Path | None,
                  plot_fn: Callable[[dict[str, Any], Path], None]) -> None:
    """Write ``result`` as JSON to ``out`` and its plot to ``plot`` (each atomically, each optional)."""
    if out is not None:
        text = json.dumps(strict_json(with_null_provenance(result)), indent=2, allow_nan=False) + "\n"
        _atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        if console is not None:  # None: a partial result rewritten after each point, quietly
            console.print(f"wrote {out}")
    if plot is not None:
        _atomic_write(plot, lambda tmp: plot_fn(result, tmp))
        console.print(f"wrote {plot}")


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temp file in its folder (which must exist), renamed over it only once complete."""
    path = Path(path).expanduser()
    check_outputs(path)
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
