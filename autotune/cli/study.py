"""`autotune study-search`: how many trials the sweep's TPE search needs to get within 3% of the exhaustive
best at each point of a grid, against random search; a table, a JSON file and a PNG."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from rich.table import Table

from .backend import select_backend
from .console import console as make_console
from ..core.errors import AutotuneError
from ..core.problem import Point
from ..tuning.grids import get_grid
from ..core.profiles import resolve_profile


def run_study_cli(*, gpu: str, grid: str, seeds: int, out: Path | None, plot: Path | None, dtype: str = "float16",
                  rep_ms: int = 100, compile_workers: int | None = None) -> dict[str, Any]:
    """The body of `autotune study-search`: everything but the typer signature. Returns the JSON document."""
    from .bench import check_outputs, write_results
    from ..core.problem import torch_dtype
    from ..evaluation.study_search import run_study
    from ..tuning.worker import default_timeout

    check_outputs(out, plot)
    torch_dtype(dtype)
    profile = resolve_profile(gpu)
    points = get_grid(grid, dtype)
    select_backend(profile)
    console = make_console(stderr=True)
    console.print(f"study-search: profile [bold]{profile.name}[/], grid {grid}, {len(points)} points, "
                  f"{seeds} seeds: every valid config timed once, then TPE and random search replayed")


    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("configs timed", total=None)

        def on_config(point: Any, config: dict[str, Any], outcome: Any) -> None:
            progress.update(task, advance=1, description=f"{point.label}")

        result = run_study(points, profile, seeds=seeds, rep_ms=rep_ms, trial_timeout_s=default_timeout(profile),
                           grid=grid, on_point=lambda res: progress.console.print(_point_line(res)),
                           compile_workers=compile_workers, on_config=on_config)
    make_console().print(study_table(result))
    if profile.interpreter:
        console.print("[yellow]cpu: Triton's interpreter, wall time; the timings say nothing about speed[/]")
    write_results(console, result, out, plot, plot_study)
    return result


def _label(row: dict[str, Any]) -> str:
    return Point(**row["point"]).label


def _spread(values: list[int | None]) -> tuple[float, int, int] | None:
    """Median, min and max of the seeds that reached the target (None if none did)."""
    hit = [v for v in values if v is not None]
    return (statistics.median(hit), min(hit), max(hit)) if hit else None


def _fmt(values: list[int | None]) -> str:
    s = _spread(values)
    missed = sum(v is None for v in values)
    text = "-" if s is None else f"{s[0]:g} ({s[1]}-{s[2]})"
    return text + (f", {missed} never" if missed else "")


def study_table(result: dict[str, Any]) -> Table:
    """Trials to within 3% of the exhaustive best: median (range) over the seeds, per point."""
    table = Table(title="trials to within 3% of the exhaustive best (median, range over seeds)")
    for col in ("point", "valid configs", "best µs", "TPE", "random"):
        table.add_column(col, no_wrap=col == "point")
    for row in result["points"]:
        best = row["exhaustive_best_us"]
        table.add_row(_label(row), str(row["valid_configs"]), "-" if best is None else f"{best:.1f}",
                      _fmt(row["tpe_trials_to_3pct"]), _fmt(row["random_trials_to_3pct"]))
    return table


def _point_line(res: Any) -> str:
    return f"  {res.point.label}: {len(res.measured)} valid configs, TPE {res.tpe}, random {res.random}"


def plot_study(result: dict[str, Any], path: str | Path) -> None:
    """A PNG of trials-to-target per point, TPE against random: median markers with min-max bars over seeds,
    and each point's valid-config count. Agg canvas, matplotlib imported here only."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise AutotuneError("--plot needs matplotlib: pip install 'flashcore[plot]'") from None
    rows = result["points"]
    prov = result.get("provenance", {})
    fig = Figure(figsize=(max(6.0, 0.7 * len(rows) + 3), 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (name, field) in enumerate((("TPE (sweep policy)", "tpe_trials_to_3pct"),
                                       ("random", "random_trials_to_3pct"))):
        xs, med, lo, hi = [], [], [], []
        for j, row in enumerate(rows):
            s = _spread(row[field])
            if s is not None:
                xs.append(j + (i - 0.5) * 0.25)
                med.append(s[0])
                lo.append(s[0] - s[1])
                hi.append(s[2] - s[0])
        ax.errorbar(xs, med, yerr=[lo, hi], fmt="o", capsize=4, color=f"C{i}", label=name)
    ax.scatter(range(len(rows)), [r["valid_configs"] for r in rows], marker="_", s=300, color="gray",
               label="valid configs (exhaustive)")
    ax.set_xticks(range(len(rows)), [_label(r) for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.6, max(len(rows), 1) - 0.4)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("trials to within 3% of the exhaustive best")
    timing = "\nCPU wall time through Triton's interpreter: meaningless for speed" \
        if prov.get("profile") == "cpu" else ""
    fig.suptitle(f"FlashCore study-search on {prov.get('gpu', '?')}, {str(prov.get('date', ''))[:10]}, "
                 f"grid {prov.get('grid')}, {len(prov.get('seeds', []))} seeds{timing}", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(str(path), format="png", dpi=110)
