"""`autotune sweep`: resolve the profile and grid, run the sweep under a progress bar, print the winners.

Trials always run in a worker process (``autotune._worker``); every failed trial is logged with its reason.
The per-trial timeout is $FLASHCORE_TRIAL_TIMEOUT seconds (default 120 on a GPU, 900 on cpu).
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._backend import select_backend
from ._errors import AutotuneError
from ._console import console as make_console
from ._grids import format_config, get_grid
from ._paths import resolve_db
from ._profiles import resolve_profile

_QUIET = ("ok", "invalid")  # statuses not logged one by one
CHILD_ENV = "FLASHCORE_SWEEP_CHILD"  # set by `sweep --devices` in its workers: the parent prints the winners


def _redact(url: str) -> str:
    from ._sweep import _redact as redact

    return redact(url)


def run_sweep(*, gpu: str, grid: str | None, trials: int | None, db: Path | None, seed: int, dtype: str,
              retune: bool, kernel: str = "attention_fwd", rep_ms: int = 100, from_misses: bool = False,
              patience: int | None = None, min_improvement: float = 0.02, time_budget: float | None = None,
              storage: str | None = None, compile_workers: int | None = None) -> None:
    """Sweep ``grid`` for ``kernel`` on profile ``gpu`` into the cache ``db``; print the winners.

    ``patience``/``min_improvement``: the per-point stopping rule; ``time_budget``: seconds for the whole sweep;
    ``storage``: the Optuna storage URL of the studies (``_sweep.make_storage``; default a journal next to the
    cache); ``compile_workers``: processes compiling ahead of timing (``_sweep.sweep``). A worker started by ``--devices`` (``_multi``) leaves the winners table to its parent.
    """
    from cache import CacheStore
    from kernels import get_family

    from ._dispatch import clear_cache
    from ._dtypes import resolve_dtype
    from ._inputs import torch_dtype
    from ._sweep import DEFAULT_TRIALS, make_storage, sweep
    from ._compile_pool import default_workers
    from ._worker import default_timeout

    torch_dtype(dtype)
    dtype, kernel = resolve_dtype(dtype, None, kernel)  # the FP8 labels ("fp8-tol0.03") select attention_fp8
    profile = resolve_profile(gpu)
    family = get_family(kernel)
    select_backend(profile)
    timeout_s = default_timeout(profile)
    path = resolve_db(db)
    points = sweep_points(path, profile, family.name, grid=grid, dtype=dtype, from_misses=from_misses)
    n_trials = trials or DEFAULT_TRIALS["cpu" if profile.interpreter else "gpu"]
    console = make_console(stderr=True)
    study_storage = make_storage(storage) if storage else None
    n_compile = (default_workers(profile.interpreter) if compile_workers is None else compile_workers) \
        if family.precompiler else 0
    with CacheStore.open(path) as store:  # first: a bad cache file is one error line, before any output
        console.print(f"sweep: kernel [bold]{family.name}[/], profile [bold]{profile.name}[/], {len(points)} "
                      f"points, up to {n_trials} trials each, {timeout_s:g} s per trial, cache {path}"
                      + (f", patience {patience} (>{min_improvement:.0%})" if patience else "")
                      + (f", time budget {time_budget:g} s" if time_budget else "")
                      + (f", studies in {escape(_redact(storage))}" if storage else "")
                      + (f", compiling ahead in {n_compile} processes" if n_compile else ""))
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            overall = progress.add_task("points", total=len(points))
            current = progress.add_task("trials", total=n_trials)

            def on_point(point, i):
                progress.update(current, completed=0, description=f"{point.label}")

            def on_trial(point, record):
                progress.advance(current)
                if record.status not in _QUIET:
                    progress.console.print(f"  {point.label} {escape(f'[{format_config(record.config)}]')}: "
                                           f"{record.status}: {escape(record.reason)}", highlight=False)

            def on_wait(point):
                progress.console.print(f"  {point.label}: another process is tuning it; coming back to it later")

            def on_done(res):
                progress.update(current, completed=n_trials)
                progress.advance(overall)
                if res.resumed and not res.skipped:
                    progress.console.print(f"  {res.point.label}: resumed, {res.resumed} trial(s) recorded earlier")
                if res.error:
                    progress.console.print(f"  {res.point.label}: [red]not tuned[/]: {escape(res.error)}")
                elif res.stopped == "time budget":
                    progress.console.print(f"  {res.point.label}: [yellow]not tuned: time budget[/] "
                                           f"({len(res.trials)} trial(s) recorded; the next sweep resumes it)")
                if res.pruned:
                    progress.console.print(f"  {res.point.label}: {len(res.pruned)} config(s) "
                                           f"{escape(res.pruned[0][1])} (or a like failure), never compiled")

            results = sweep(points, profile=profile, store=store, trials=n_trials, seed=seed, kernel=family,
                            retune=retune, on_point=on_point, on_trial=on_trial, on_done=on_done,
                            on_wait=on_wait, trial_timeout_s=timeout_s, rep_ms=rep_ms, patience=patience,
                            min_improvement=min_improvement, time_budget_s=time_budget, storage=study_storage,
                            compile_workers=n_compile)
    clear_cache()
    if os.environ.get(CHILD_ENV) != "1":
        make_console().print(summary_table(results))
    late = [r.point.label for r in results if r.stopped == "time budget"]
    if late:
        console.print(f"[yellow]not tuned: time budget at {len(late)} point(s): {', '.join(late)}; "
                      "run the same command again to resume[/]")
    missing = [r.point.label for r in results if r.best is None and r.stopped != "time budget"]
    if missing:
        console.print(f"[yellow]no config passed the gate at {len(missing)} point(s): {', '.join(missing)}[/]")


def sweep_points(path: Path, profile, kernel: str, *, grid: str | None, dtype: str, from_misses: bool) -> list:
    """The points a sweep tunes: the lookup misses next to ``path`` (``from_misses``), else the named grid."""
    if from_misses:
        if grid:
            raise AutotuneError("--from-misses and --grid exclude each other")
        points = missed_points(path, profile, kernel)
        if not points:
            raise AutotuneError(f"no lookup misses recorded for {kernel} on this device next to {path}")
        return points
    return get_grid(grid or ("smoke" if profile.interpreter else "default"), dtype)


def missed_points(path: Path, profile, kernel: str) -> list:
    """The points get_kernel missed (served nearest/default) on this device, from ``<db>.misses.jsonl``."""
    from ._grids import Point
    from ._misses import read_misses
    from ._profiles import device_identity

    gpu, _ = device_identity(profile)
    return [Point(m["batch"], m["heads"], m["seq_len"], m["head_dim"], m["causal"], m["dtype"])
            for m, _ in read_misses(path) if m["gpu"] == gpu and m["kernel"] == kernel]


def summary_table(results) -> Table:
    """The winners of a sweep, one row per point."""
    table = Table(title="winners")
    for col in ("point", "config", "median µs", "TF/s", "rel err", "ok/fail/invalid", "note"):  # invalid: not run
        table.add_column(col)
    for r in results:
        ok = sum(t.status == "ok" for t in r.trials)
        invalid = sum(t.status == "invalid" for t in r.trials) + r.invalid + len(r.pruned)
        b = r.best
        cfg = format_config(b.config) if b else "-"
        note = ("cached" if r.skipped else "error" if r.error else "time budget" if r.stopped == "time budget"
                else r.stopped if r.stopped == "patience" else "" if b else "no winner")
        table.add_row(r.point.label, cfg, f"{b.median_us:.1f}" if b else "-", f"{b.tflops:.1f}" if b else "-",
                      f"{b.rel_err:.2e}" if b and b.rel_err is not None else "-",
                      f"{ok}/{r.failures}/{invalid}", note)
    return table
