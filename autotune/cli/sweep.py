"""`autotune sweep`: resolve the profile and grid, run the sweep under a progress bar, print the winners.

Trials always run in a worker process (``tuning.worker``); every failed trial is logged with its reason.
The per-trial timeout is $FLASHCORE_TRIAL_TIMEOUT seconds (default 120 on a GPU, 900 on cpu).
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .backend import select_backend
from ..core.errors import AutotuneError
from .console import console as make_console
from ..core.problem import format_config
from ..tuning.grids import get_grid
from ..runtime.paths import resolve_db
from ..core.profiles import resolve_profile

_QUIET = ("ok", "invalid")  # statuses not logged one by one
CHILD_ENV = "FLASHCORE_SWEEP_CHILD"  # set by `sweep --devices` in its workers: the parent prints the winners


def run_sweep(*, gpu: str, grid: str | None, trials: int | None, db: Path | None, seed: int, dtype: str | None,
              retune: bool, kernels: tuple[str, ...] | None = None, rep_ms: int = 100, from_misses: bool = False,
              patience: int | None = None, min_improvement: float = 0.02, time_budget: float | None = None,
              storage: str | None = None, compile_workers: int | None = None) -> None:
    """Sweep ``grid`` (in ``dtype``, default the grid's dtypes) on profile ``gpu`` into the cache ``db``: every
    candidate of ``kernels`` (None: ours and the backends) at every point; print the winners.

    ``patience``/``min_improvement``: the per-point stopping rule; ``time_budget``: seconds for the whole sweep;
    ``storage``: the Optuna storage URL of the studies (``tuning.storage.make_storage``; default a journal next to
    the cache); ``compile_workers``: processes compiling ahead of timing. A worker started by ``--devices``
    (``cli.multi``) leaves the winners table to its parent.
    """
    from flashcore.cache import CacheStore

    from ..runtime.dispatch import clear_cache
    from ..tuning.options import Hooks, SweepOptions
    from ..tuning.storage import make_storage, redact
    from ..tuning.sweep import sweep
    from ..tuning.worker import default_timeout

    profile = resolve_profile(gpu)
    select_backend(profile)
    timeout_s = default_timeout(profile)
    path = resolve_db(db)
    points = sweep_points(path, profile, kernels, grid=grid, dtype=dtype, from_misses=from_misses)
    opts = SweepOptions(profile=profile, trials=trials, seed=seed, kernels=kernels, retune=retune, rep_ms=rep_ms,
                        trial_timeout_s=timeout_s, patience=patience, min_improvement=min_improvement,
                        time_budget_s=time_budget, storage=make_storage(storage) if storage else None,
                        compile_workers=compile_workers)
    jobs = sum(len(opts.candidates(p)) for p in points)
    if not jobs:
        raise AutotuneError(f"no candidate of {', '.join(kernels or ('any kernel',))} can compute these points "
                            f"on {profile.name}")
    names = sorted({f.name for p in points for f in opts.candidates(p)})
    console = make_console(stderr=True)
    with CacheStore.open(path, make_parents=db is None) as store:  # first: a bad cache is one error line
        console.print(f"sweep: {len(points)} points x candidates {', '.join(names)} ({jobs} studies), profile "
                      f"[bold]{profile.name}[/], up to {opts.n_trials} trials each, {timeout_s:g} s per trial, "
                      f"cache {path}"
                      + (f", patience {patience} (>{min_improvement:.0%})" if patience else "")
                      + (f", time budget {time_budget:g} s" if time_budget else "")
                      + (f", studies in {escape(redact(storage))}" if storage else ""))
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            overall = progress.add_task("studies", total=jobs)
            current = progress.add_task("trials", total=opts.n_trials)

            def on_point(point, i):
                progress.update(current, completed=0, description=f"{point.label}")

            def on_trial(point, record):
                progress.advance(current)
                if record.status not in _QUIET:
                    progress.console.print(f"  {point.label} {record.key.kernel} "
                                           f"{escape(f'[{format_config(record.config)}]')}: "
                                           f"{record.status}: {escape(record.reason)}", highlight=False)

            def on_wait(point):
                progress.console.print(f"  {point.label}: another process is tuning it; coming back to it later")

            def on_done(res):
                progress.update(current, completed=opts.n_trials)
                progress.advance(overall)
                where = f"  {res.point.label} {res.kernel}"
                if res.resumed and not res.skipped:
                    progress.console.print(f"{where}: resumed, {res.resumed} trial(s) recorded earlier")
                if res.error:
                    progress.console.print(f"{where}: [red]not tuned[/]: {escape(res.error)}")
                elif res.stopped == "time budget":
                    progress.console.print(f"{where}: [yellow]not tuned: time budget[/] "
                                           f"({len(res.trials)} trial(s) recorded; the next sweep resumes it)")
                if res.pruned:
                    progress.console.print(f"{where}: {len(res.pruned)} config(s) "
                                           f"{escape(res.pruned[0][1])} (or a like failure), never compiled")

            results = sweep(points, store, opts, Hooks(on_point=on_point, on_trial=on_trial, on_done=on_done,
                                                       on_wait=on_wait))
    clear_cache()
    if os.environ.get(CHILD_ENV) == "1":  # a worker of `sweep --devices`: its parent prints the table
        from .reports import RESULTS_ENV, dump_results

        if os.environ.get(RESULTS_ENV):
            dump_results(os.environ[RESULTS_ENV], results)
        return
    report_results(results, console)


def report_results(results, console) -> None:
    """The winners table on stdout, then (on ``console``) the points left for later and those without a winner."""
    make_console().print(summary_table(results))
    late = sorted({r.point.label for r in results if r.stopped == "time budget"})
    if late:
        console.print(f"[yellow]not tuned: time budget at {len(late)} point(s): {', '.join(late)}; "
                      "run the same command again to resume[/]")
    report_untuned(results, console)


def report_untuned(results, console) -> None:
    """Say which points got no winner from any candidate, and why: nothing valid to try, or nothing passed."""
    by_point: dict = {}
    for r in results:
        by_point.setdefault(r.point, []).append(r)
    empty = [p.label for p, rs in by_point.items()
             if all(r.valid_configs == 0 and not r.skipped and r.stopped != "time budget" for r in rs)]
    failed = [p.label for p, rs in by_point.items() if p.label not in empty
              and all(r.best is None and r.stopped != "time budget" for r in rs)]
    if empty:
        console.print(f"[yellow]no valid config at {len(empty)} point(s): {', '.join(empty)} (every config breaks a "
                      "rule of the search space; get_kernel serves the default there)[/]")
    if failed:
        console.print(f"[yellow]no config passed the gate at {len(failed)} point(s): {', '.join(failed)}[/]")


def sweep_points(path: Path, profile, kernels: tuple[str, ...] | None, *, grid: str | None, dtype: str | None,
                 from_misses: bool) -> list:
    """The points a sweep tunes: the lookup misses next to ``path`` (``from_misses``), else the named grid (in
    ``dtype``, default the grid's own dtypes)."""
    if from_misses:
        if grid:
            raise AutotuneError("--from-misses and --grid exclude each other")
        points = missed_points(path, profile, None)
        if dtype:
            points = [p for p in points if p.dtype == dtype]
        if not points:
            raise AutotuneError(f"no lookup misses recorded on this device next to {path}")
        return points
    return get_grid(grid or ("smoke" if profile.interpreter else "default"), dtype)


def missed_points(path: Path, profile, kernel: str | None) -> list:
    """The points get_kernel missed (served nearest/default) on this device, from ``<db>.misses.jsonl``."""
    from ..core.problem import Point
    from ..runtime.misses import read_misses
    from ..core.profiles import device_identity

    gpu, _ = device_identity(profile)
    return list(dict.fromkeys(
        Point(m["batch"], m["heads"], m["seq_len"], m["head_dim"], m["causal"], m["dtype"], m["kv_heads"],
              m["kv_len"], m["lower_right"])
        for m, _ in read_misses(path) if m["gpu"] == gpu and (kernel is None or m["kernel"] == kernel)))


def summary_table(results) -> Table:
    """The winners of a sweep, one row per point and candidate; "served" marks the fastest at its point (what
    get_kernel serves), "own" the fastest of our kernels there."""
    from flashcore.kernels import get_family

    fastest: dict = {}
    own: dict = {}
    for r in results:
        if r.best is not None:
            if r.point not in fastest or r.best.median_us < fastest[r.point].median_us:
                fastest[r.point] = r.best
            if get_family(r.kernel).kind != "backend" and (r.point not in own
                                                            or r.best.median_us < own[r.point].median_us):
                own[r.point] = r.best
    table = Table(title="winners")
    for col in ("point", "candidate", "config", "median µs", "TF/s", "rel err", "ok/fail/invalid", "note"):
        table.add_column(col, no_wrap=col in ("point", "candidate"))  # invalid: never run
    for r in results:
        ok = sum(t.status == "ok" for t in r.trials)
        invalid = sum(t.status == "invalid" for t in r.trials) + r.invalid + len(r.pruned)
        b = r.best
        cfg = format_config(b.config) if b else "-"
        marks = [m for m, best in (("served", fastest), ("own", own)) if b is not None and best.get(r.point) is b]
        note = ("cached" if r.skipped else "error" if r.error else "time budget" if r.stopped == "time budget"
                else "no valid config" if r.valid_configs == 0 else r.stopped if r.stopped == "patience"
                else "" if b else "no winner")
        table.add_row(r.point.label, r.kernel, cfg, f"{b.median_us:.1f}" if b else "-",
                      f"{b.tflops:.1f}" if b else "-", f"{b.rel_err:.2e}" if b and b.rel_err is not None else "-",
                      f"{ok}/{r.failures}/{invalid}", " ".join(marks + ([note] if note else [])))
    return table
