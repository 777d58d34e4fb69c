"""The `autotune` command line: thin typer shells over the library.

Errors a user can cause end with one line on stderr: exit code 2 for a malformed command line (an unknown option,
a value out of range: click's convention), 1 for everything else (a bad grid, the wrong GPU, a corrupt cache).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import AutotuneError
from .console import Command, Group

GRID_NAMES = "smoke, smoke-gqa, small, heads, long, default, models, decode, chunked-prefill"

app = typer.Typer(
    name="autotune",
    help="Tune attention kernels per problem point (our Triton kernels and PyTorch's SDPA backends, every one "
         "gated against fp32) and serve the fastest correct one from a SQLite cache.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help, wrapped between words (console.HelpFormatter)
    cls=Group,
)
_command = app.command


def _command_with_help_layout(*args, **kwargs):
    """``app.command``, every command with the help layout of :class:`console.Command`."""
    return _command(*args, **{"cls": Command, **kwargs})


app.command = _command_with_help_layout

DbOption = Annotated[Optional[Path], typer.Option(
    "--db", envvar="AUTOTUNE_DB", help="Cache file (default: $AUTOTUNE_DB, else the user cache directory).",
    show_default=False)]


@contextlib.contextmanager
def domain_errors():
    """Turn the errors a user can cause into one line on stderr and exit code 1."""
    from flashcore.cache import CacheError
    from flashcore.search_spaces import SpaceError

    try:
        yield
    except (AutotuneError, CacheError, SpaceError, ValueError, KeyError, OSError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(1) from None


@app.command(short_help="Tune every candidate at every point of a grid, each trial gated against fp32.")
def sweep(
    gpu: Annotated[str, typer.Option(help="GPU profile: auto (read the device; cpu without one), h100, h200, "
                                          "or cpu (Triton's interpreter).")] = "auto",
    grid: Annotated[Optional[str], typer.Option(help=f"Named grid: {GRID_NAMES}. Default: smoke on cpu, default "
                                                     "on a GPU.")] = None,
    trials: Annotated[Optional[int], typer.Option(min=1, max=10000, help="Measured configs per point and kernel "
                                                  "family (default 30 on a GPU, 6 on cpu).")] = None,
    db: DbOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the Optuna sampler and the inputs.")] = 0,
    dtype: Annotated[Optional[str], typer.Option(help="float16, bfloat16, or fp8 (the FP8 kernel family on "
                                                      "16-bit inputs, gated by an error budget: see --fp8-tol). "
                                                      "Default: the grid's dtypes (float16 and bfloat16 for every "
                                                      "grid but smoke).", show_default=False)] = None,
    fp8_tol: Annotated[Optional[str], typer.Option(help="With --dtype fp8: the error budget, the relative L2 "
                                                        "error against the fp32 reference allowed, in (0, 1]; "
                                                        "default 0.1. Part of the cache key: winners under "
                                                        "different budgets coexist.", show_default=False,
                                                   metavar="FLOAT")] = None,
    retune: Annotated[bool, typer.Option(help="Tune points the cache already has a winner for.")] = False,
    kernel: Annotated[str, typer.Option(help="Candidates to tune, comma-separated: auto (every kernel family of "
                                             "ours that can compute a point, and on a GPU the backends "
                                             "sdpa_cudnn, sdpa_flash, sdpa_efficient and fa4 where installed; "
                                             "the FP8 family with --dtype fp8), or names: of our kernel families "
                                             "(the folders of kernels/) or of backends such as "
                                             "sdpa_cudnn.")] = "auto",
    rep_ms: Annotated[int, typer.Option(min=1, max=10000, help="Timing window per trial on a GPU, in ms "
                                        "(triton.testing.do_bench's rep; 25 ms of warm-up come first).")] = 100,
    from_misses: Annotated[bool, typer.Option("--from-misses", help="Tune the shapes get_kernel served by "
                                              "nearest or default on this device (see `autotune misses`) "
                                              "instead of a grid.")] = False,
    patience: Annotated[int, typer.Option(min=1, max=10000, help="Stop a point's study when its best has not "
                                          "improved by more than --min-improvement over this many measured "
                                          "trials (or at --trials).")] = 10,
    min_improvement: Annotated[float, typer.Option(min=0.0, max=1.0, help="The gain, as a fraction of the "
                                                   "best time, that counts as an improvement for "
                                                   "--patience.")] = 0.02,
    time_budget: Annotated[Optional[float], typer.Option(min=1.0, help="Seconds for the whole sweep: no trial "
                                                         "starts after them; the points not finished are "
                                                         "reported as not tuned and resume on the next "
                                                         "sweep.", show_default=False)] = None,
    devices: Annotated[Optional[str], typer.Option(help="Comma-separated CUDA device indices (0,1,...): one "
                                                   "sweep worker process per device (CUDA_VISIBLE_DEVICES), "
                                                   "sharing the grid's points and the cache; with --gpu cpu, "
                                                   "that many interpreter processes.", show_default=False)] = None,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage of the studies: an RDB URL "
                                                   "(postgresql://user@host/db, sqlite:///file.db) shared by "
                                                   "several hosts, or journal:PATH. Default: a journal file "
                                                   "next to the cache.", show_default=False)] = None,
    compile_workers: Annotated[Optional[int], typer.Option(min=0, max=256, help="Processes that compile the "
                                                           "next configs with Triton while the GPU times the "
                                                           "current ones (they share Triton's on-disk cache). "
                                                           "Default: one per CPU core but one, on a GPU; 0 "
                                                           "compiles each config when it is timed.",
                                                           show_default=False)] = None,
) -> None:
    """Tune every point of a grid: every candidate (our kernel families, an Optuna study each; the backends, one
    trial each), each trial gated against fp32; the fastest correct candidate is what get_kernel serves.

    Trials run in a worker process: a crashing or hanging config ($FLASHCORE_TRIAL_TIMEOUT s, default 120 on a
    GPU) is recorded and the sweep goes on. A killed sweep, started again with the same arguments, resumes.
    Only valid configs are proposed; a point's study starts from the winners of its nearest tuned neighbours.
    --devices 0,1 runs one such sweep per GPU of this host; --storage puts the studies where other hosts see them.
    """
    from ..tuning.dtypes import resolve_dtype
    from .sweep import run_sweep

    with domain_errors():  # --dtype fp8 --fp8-tol X -> the label fp8-tol<X> and the FP8 kernel
        dtype, kernels = resolve_dtype(dtype, fp8_tol, kernel)
    kw = dict(gpu=gpu, grid=grid, trials=trials, db=db, seed=seed, dtype=dtype, retune=retune, kernels=kernels,
              rep_ms=rep_ms, from_misses=from_misses, patience=patience, min_improvement=min_improvement,
              time_budget=time_budget, storage=storage, compile_workers=compile_workers)
    if devices is not None:
        from .multi import run_multi

        with domain_errors():
            code = run_multi(devices, **kw)
        if code:
            raise typer.Exit(code)
        return
    with domain_errors():
        run_sweep(**kw)


@app.command(short_help="Time our best kernel, the served candidate and the SDPA backends on a grid.")
def bench(
    grid: Annotated[str, typer.Option(help=f"Named grid: {GRID_NAMES}.")],
    gpu: Annotated[str, typer.Option(help="GPU profile: auto (read the device; cpu without one), h100, h200, "
                                          "or cpu (Triton's interpreter, wall time: meaningless for speed).")] = "auto",
    db: DbOption = None,
    dtype: Annotated[Optional[str], typer.Option(help="float16, bfloat16 (default: the grid's dtypes), or fp8: the "
                                                      "tuned FP8 kernel (alone and with its quantization) against "
                                                      "the tuned fp16 kernel and SDPA.", show_default=False)] = None,
    kernel: Annotated[Optional[str], typer.Option(help="Bench only this kernel family as 'own' (and served); "
                                                       "default: our fastest kernel at each point, and what "
                                                       "get_kernel serves.", show_default=False)] = None,
    fp8_tol: Annotated[Optional[str], typer.Option(help="With --dtype fp8: the error budget whose FP8 winners "
                                                        "are benched (default 0.1).", show_default=False,
                                                   metavar="FLOAT")] = None,
    fp16_db: Annotated[Optional[Path], typer.Option(help="With --dtype fp8: the cache of the tuned fp16 kernel "
                                                         "(default: --db).", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the results as JSON here (default: print the "
                                                     "table only).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG of TF/s per point and provider here "
                                                      "(needs matplotlib).")] = None,
    rep_ms: Annotated[int, typer.Option(min=1, max=10000, help="Timing budget per provider and point, "
                                                               "in ms.")] = 100,
) -> None:
    """Compare our own best kernel and the served candidate (ours or a backend) with PyTorch SDPA's flash, cudnn and
    efficient backends on every point of a grid, on the same inputs: times, TF/s, errors against fp32, ratios."""
    from flashcore.kernels import families_of_dtype

    from ..tuning.dtypes import resolve_dtype
    from .bench import run_bench_cli

    with domain_errors():
        dtype, kernels = resolve_dtype(dtype, fp8_tol, kernel)
        if kernels and kernels == families_of_dtype("fp8"):
            from .bench_fp8 import run_bench_fp8_cli

            run_bench_fp8_cli(gpu=gpu, grid=grid, db=db, fp16_db=fp16_db, dtype=dtype, out=out, plot=plot,
                              rep_ms=rep_ms)
            return
        if fp16_db is not None:
            raise AutotuneError("--fp16-db is the fp16 cache of --dtype fp8 (the fp16 bench reads --db)")
        if kernels and len(kernels) > 1:
            raise AutotuneError("bench takes one --kernel (or none: our fastest kernel and the served candidate)")
        run_bench_cli(gpu=gpu, grid=grid, db=db, dtype=dtype, out=out, plot=plot, rep_ms=rep_ms,
                      kernel=kernels[0] if kernels else None)


@app.command(name="study-search", short_help="How many trials TPE and random search need to get within 3% "
                                                "of the best config.")
def study_search(
    grid: Annotated[str, typer.Option(help=f"Named grid: {GRID_NAMES}.")],
    gpu: Annotated[str, typer.Option(help="GPU profile: auto (read the device; cpu without one), h100, h200, "
                                          "or cpu (Triton's interpreter, wall time: meaningless for speed).")] = "auto",
    seeds: Annotated[int, typer.Option(min=1, max=100, help="Seeds 0..N-1 of the replayed TPE and random "
                                                            "searches.")] = 5,
    out: Annotated[Optional[Path], typer.Option(help="Write the results as JSON here (default: print the "
                                                     "table only).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG of trials-to-target per point, TPE against "
                                                      "random (needs matplotlib).")] = None,
    dtype: Annotated[str, typer.Option(help="float16 or bfloat16.")] = "float16",
    rep_ms: Annotated[int, typer.Option(min=1, max=10000, help="Timing window per config on a GPU, in "
                                                               "ms.")] = 100,
    compile_workers: Annotated[Optional[int], typer.Option(min=0, max=256, help="Processes compiling the "
                                                           "configs ahead of timing (default: one per CPU "
                                                           "core but one, on a GPU; 0: none).",
                                                           show_default=False)] = None,
) -> None:
    """Time every valid config of each point once (gated), then replay the sweep's TPE search and random search
    on those timings: trials needed per seed to get within 3% of the exhaustive best. Writes nothing to the cache.
    """
    from flashcore.kernels import default_family

    from ..tuning.dtypes import resolve_dtype
    from .study import run_study_cli

    with domain_errors():
        if resolve_dtype(dtype)[1] is not None:
            raise AutotuneError(f"study-search studies the fp16 kernel ({default_family()}); --dtype {dtype} is not "
                                "supported")
        run_study_cli(gpu=gpu, grid=grid, seeds=seeds, out=out, plot=plot, dtype=dtype, rep_ms=rep_ms,
                      compile_workers=compile_workers)


@app.command(short_help="Re-run the correctness gate on every winner this toolchain would serve.")
def validate(
    db: DbOption = None,
    gpu: Annotated[str, typer.Option(help="GPU profile: auto (read the device; cpu without one), h100, h200, "
                                          "or cpu (Triton's interpreter).")] = "auto",
    drop: Annotated[bool, typer.Option("--drop", help="Delete the cache's winners that fail (otherwise exit 1 "
                                                      "if any fails).")] = False,
    shipped: Annotated[bool, typer.Option("--shipped/--no-shipped", help="Also validate the tables shipped with "
                                          "the package (the default); --no-shipped validates only the "
                                          "cache.")] = True,
) -> None:
    """Re-run the correctness gate on every winner this toolchain would serve on this device: the cache's and
    the shipped tables'. A row of the cache that is not a valid winner is reported in one line and skipped.

    Exit code 1 if a winner fails (and is not dropped) or a row cannot be read."""
    from .validate import run_validate

    with domain_errors():
        problems = run_validate(db=db, gpu=gpu, drop=drop, shipped=shipped)
    if problems:
        raise typer.Exit(1)


@app.command()
def show(db: DbOption = None) -> None:
    """List the cached winners, marking those the current toolchain would serve."""
    from .tables import show_winners

    with domain_errors():
        show_winners(db)


@app.command()
def export(
    format: Annotated[str, typer.Option("--format", "-f", help="json (for import elsewhere) or csv.")] = "json",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    db: DbOption = None,
) -> None:
    """Export the cached winners as a table other teams can import."""
    from .tables import export_winners

    with domain_errors():
        export_winners(db, format, output)


# `autotune import` takes tables of at most IMPORT_MAX_ENTRIES entries unless --max-entries says more, up to the
# table format's own bound (cache.table_format.MAX_ENTRIES, repeated here: importing flashcore.cache costs `autotune
# --help` 0.3 s): every process that serves from a cache reads all of it on its first get_kernel, and an import
# of 100,000 winners took 15 s and 432 MB on the H200 host, the first get_kernel on that cache 2.5 s. A sweep of
# every grid on one GPU is about 3,000 winners per toolchain.
IMPORT_MAX_ENTRIES = 20_000
TABLE_MAX_ENTRIES = 100_000


@app.command(name="import")
def import_(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A JSON table written by `autotune export`.")],
    db: DbOption = None,
    replace: Annotated[bool, typer.Option(help="Overwrite existing winners even when they are faster.")] = False,
    max_entries: Annotated[int, typer.Option(min=1, max=TABLE_MAX_ENTRIES, metavar="N", help="Refuse a table of "
                                             "more entries than this (a large cache slows the first get_kernel "
                                             "of every process that serves from it).")] = IMPORT_MAX_ENTRIES,
) -> None:
    """Import a tuned table; every field is validated and nothing is written if any entry is wrong."""
    from .tables import import_winners

    with domain_errors():
        import_winners(db, file, replace, max_entries)


@app.command()
def misses(db: DbOption = None) -> None:
    """List the shapes get_kernel served by "nearest" or "default" from this cache, most frequent first."""
    from .tables import show_misses

    with domain_errors():
        show_misses(db)


@app.command()
def merge(
    inputs: Annotated[list[Path], typer.Argument(
        help="Cache files to merge (A.db B.db ...): only read, never modified. List OUT among them to merge into it.",
        metavar="INPUT.db", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="OUT.db", help="The merged cache to write "
                                         "(built in a temporary file next to it, renamed at the end; its folder "
                                         "must exist).")],
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists and is not one of the "
                                                 "inputs.")] = False,
) -> None:
    """Merge the caches of several hosts: per key the fastest winner, and every trial of every input exactly once."""
    from .merge import run_merge

    with domain_errors():
        run_merge(inputs, output, overwrite)


def _click_exceptions():
    """The click exceptions typer raises: its vendored copy (typer 0.2x and newer) or click itself."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def main(argv: list[str] | None = None) -> None:
    """Run the command line: one line and exit 2 for a malformed command line (no boxed usage text)."""
    import os
    import sys

    exceptions = _click_exceptions()
    if not sys.stdout.isatty():
        os.environ.setdefault("COLUMNS", "120")  # piped --help: wrap at 120 columns, not rich's default 80
    try:
        code = app(args=argv, standalone_mode=False)
    except exceptions.UsageError as exc:
        ctx = exc.ctx
        if isinstance(exc, getattr(exceptions, "NoArgsIsHelpError", ())) and ctx is not None:
            typer.echo(ctx.get_help())  # `autotune` or `autotune sweep` alone: the help
            sys.exit(0)
        name = ctx.command_path if ctx is not None else "autotune"
        typer.echo(f"error: {exc.format_message()} (see `{name} --help`)", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as exc:  # older typer/click raise it even outside standalone mode
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
