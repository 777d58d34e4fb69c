"""`autotune sweep`: resolve the profile and grid, run the sweep under a progress bar, print the winners."""

from __future__ import annotations

from pathlib import Path

from ._console import console as make_console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._backend import select_backend
from ._grids import format_config, get_grid
from ._paths import resolve_db
from ._profiles import resolve_profile


def run_sweep(*, gpu: str, grid: str | None, trials: int | None, db: Path | None, seed: int, dtype: str,
              retune: bool) -> None:
    from cache import CacheStore

    from ._dispatch import clear_cache
    from ._inputs import torch_dtype
    from ._sweep import DEFAULT_TRIALS, sweep

    torch_dtype(dtype)
    profile = resolve_profile(gpu)
    points = get_grid(grid or ("smoke" if profile.interpreter else "default"), dtype)
    select_backend(profile)
    path = resolve_db(db)
    n_trials = trials or DEFAULT_TRIALS["cpu" if profile.interpreter else "gpu"]
    console = make_console(stderr=True)
    console.print(f"sweep: profile [bold]{profile.name}[/], {len(points)} points, up to {n_trials} trials each, "
                  f"cache {path}")
    with CacheStore.open(path) as store, Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=False) as progress:
        overall = progress.add_task("points", total=len(points))
        current = progress.add_task("trials", total=n_trials)

        def on_point(point, i):
            progress.update(current, completed=0, description=f"{point.label}")

        def on_trial(point, record):
            if record.status != "invalid":
                progress.advance(current)

        def on_done(res):
            progress.update(current, completed=n_trials)
            progress.advance(overall)

        results = sweep(points, profile=profile, store=store, trials=n_trials, seed=seed, retune=retune,
                        on_point=on_point, on_trial=on_trial, on_done=on_done)
    clear_cache()
    make_console().print(summary_table(results))
    missing = [r.point.label for r in results if r.best is None]
    if missing:
        console.print(f"[yellow]no config passed the gate at {len(missing)} point(s): {', '.join(missing)}[/]")


def summary_table(results) -> Table:
    table = Table(title="winners")
    for col in ("point", "config", "median µs", "TF/s", "rel err", "ok/fail/invalid", "note"):
        table.add_column(col)
    for r in results:
        ok = sum(t.status == "ok" for t in r.trials)
        invalid = sum(t.status == "invalid" for t in r.trials)
        b = r.best
        cfg = format_config(b.config) if b else "-"
        table.add_row(r.point.label, cfg, f"{b.median_us:.1f}" if b else "-", f"{b.tflops:.1f}" if b else "-",
                      f"{b.rel_err:.2e}" if b and b.rel_err is not None else "-",
                      f"{ok}/{r.failures}/{invalid}", "cached" if r.skipped else ("" if b else "no winner"))
    return table
