"""`autotune show`, `export` and `import`: the cache's winners as a table, in and out."""

from __future__ import annotations

from pathlib import Path

from .console import console as make_console
from rich.table import Table

from ..core.errors import AutotuneError
from ..core.problem import Point, format_config
from ..runtime.paths import resolve_db


def _existing(db: Path | None) -> Path:
    path = resolve_db(db)
    if not path.exists():
        raise AutotuneError(f"no cache at {path} (run `autotune sweep` first, or pass --db)")
    return path


def _winners(db: Path | None) -> tuple[list, int]:
    """The cache's valid winners, and how many rows were not one (each reported on stderr in one line)."""
    from .rows import read_winners

    entries, problems = read_winners(_existing(db))
    log = make_console(stderr=True)
    for line in problems:
        log.print(f"warning: {line}", markup=False, highlight=False)
    return entries, len(problems)


def show_winners(db: Path | None) -> None:
    from flashcore.kernels import families

    from ..core.toolchain import point_of, versions

    triton_version = versions()[0]
    known = {f.name: f for f in families()}
    entries, bad = _winners(db)
    table = Table(title=f"{len(entries)} cached winners ({resolve_db(db)})"
                        + (f", {bad} unreadable row(s) skipped" if bad else ""))
    for col in ("gpu", "kernel", "point", "config", "median µs", "TF/s", "served"):
        table.add_column(col, no_wrap=col == "point")
    for e in sorted(entries, key=lambda e: (e.key.gpu, e.key.kernel, e.key.dtype, e.key.causal, e.key.head_dim,
                                             e.key.seq_len, e.key.kv_len, e.key.batch, e.key.heads)):
        k = e.key
        family = known.get(k.kernel)
        gqa = k.kv_heads != k.heads
        if family is None:
            stale = ["unknown kernel"]
        elif family.kind == "backend":
            stale = [] if family.hash_matches(k.kernel_hash, gqa) else ["torch/library build"]
        else:
            stale = [why for why, bad in (("triton", k.triton_version != triton_version),
                                          ("kernel source", not family.hash_matches(k.kernel_hash, gqa))) if bad]
        table.add_row(k.gpu, k.kernel, point_of(k).label, format_config(e.config), f"{e.median_us:.1f}",
                      f"{e.tflops:.1f}", "yes" if not stale else "stale: " + ", ".join(stale))
    make_console().print(table)


def export_winners(db: Path | None, fmt: str, output: Path | None) -> None:
    from flashcore.cache import write_csv, write_json

    from ..core.profiles import cuda_device
    from ..core.toolchain import provenance

    if fmt not in ("json", "csv"):
        raise AutotuneError(f"unknown format {fmt!r}; choose json or csv")
    entries, _ = _winners(db)
    if fmt == "json":
        device = cuda_device() or ("cpu", "cpu")
        # a table's provenance holds strings only: a torch without CUDA has no "cuda" entry (not the text "None")
        prov = {k: v for k, v in provenance(*device).items() if v not in (None, "None")}
        text = write_json(entries, output, provenance=prov)
    else:
        text = write_csv(entries, output)
    if output is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        make_console(stderr=True).print(f"wrote {len(entries)} entries to {output}")


def import_winners(db: Path | None, file: Path, replace: bool, max_entries: int | None = None) -> None:
    """Validate the table at ``file`` (its fields, its size: at most ``max_entries`` entries, and each config as
    get_kernel checks it), then write it into the cache in one transaction; a refusal writes nothing."""
    from flashcore.cache import CacheStore, TableTooLarge, read_table

    from ..runtime.index import unusable_reason

    try:
        entries = read_table(file, max_entries=max_entries)
    except TableTooLarge as exc:
        how = (f"split it: {exc.limit} is the table format's limit" if exc.hard
               else f"pass --max-entries {exc.entries} to import it anyway")
        raise AutotuneError(f"{file} holds {exc.entries} entries, more than the {exc.limit} `autotune import` "
                            f"takes (a large cache slows the first get_kernel of every process); {how}; "
                            "nothing imported") from None
    for n, entry in enumerate(entries, 1):  # the check get_kernel applies before serving a row
        why = unusable_reason(entry)
        if why is not None:
            raise AutotuneError(f"{file}: entry {n} ({entry.key.kernel} at B{entry.key.batch} H{entry.key.heads} "
                                f"S{entry.key.seq_len} D{entry.key.head_dim}) cannot run: {why}; nothing imported")
    with CacheStore.open(resolve_db(db), make_parents=db is None) as store:
        written = store.import_entries(entries, replace=replace, validated=True)  # read_table checked them
    make_console(stderr=True).print(f"imported {written} of {len(entries)} entries from {file}"
                               + ("" if replace else " (existing faster winners kept)"))


def show_misses(db: Path | None) -> None:
    from ..runtime.misses import read_misses

    path = resolve_db(db)
    misses = read_misses(path, drop_tuned=True)  # shapes tuned since they were missed are done
    table = Table(title=f"{len(misses)} missed shapes ({path}.misses.jsonl)")
    for col in ("gpu", "served by", "point", "lookups"):
        table.add_column(col)
    for m, n in misses:
        point = Point(m["batch"], m["heads"], m["seq_len"], m["head_dim"], m["causal"], m["dtype"], m["kv_heads"],
                      m["kv_len"], m["lower_right"])
        table.add_row(m["gpu"], m["kernel"], point.label, str(n))
    make_console().print(table)
    if misses:
        make_console(stderr=True).print("tune them with: autotune sweep --from-misses" + (f" --db {db}" if db else ""))
