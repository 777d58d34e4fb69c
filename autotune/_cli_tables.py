"""`autotune show`, `export` and `import`: the cache's winners as a table, in and out."""

from __future__ import annotations

from pathlib import Path

from ._console import console as make_console
from rich.table import Table

from ._errors import AutotuneError
from ._grids import format_config
from ._paths import resolve_db


def _open_existing(db: Path | None):
    from cache import CacheStore

    path = resolve_db(db)
    if not path.exists():
        raise AutotuneError(f"no cache at {path} (run `autotune sweep` first, or pass --db)")
    return CacheStore.open(path)


def show_winners(db: Path | None) -> None:
    from kernels import FAMILIES

    from ._toolchain import versions

    triton_version, torch_version = versions()
    with _open_existing(db) as store:
        entries = store.winners()
    table = Table(title=f"{len(entries)} cached winners ({resolve_db(db)})")
    for col in ("gpu", "kernel", "dtype", "causal", "B", "H", "S", "D", "config", "median µs", "TF/s", "served"):
        table.add_column(col)
    for e in sorted(entries, key=lambda e: (e.key.gpu, e.key.kernel, e.key.dtype, e.key.causal, e.key.head_dim,
                                             e.key.seq_len, e.key.batch, e.key.heads)):
        k = e.key
        family = FAMILIES.get(k.kernel)
        stale = [why for why, bad in (("triton", k.triton_version != triton_version),
                                      ("torch", k.torch_version != torch_version),
                                      ("kernel source", family is None or k.kernel_hash != family.source_hash))
                 if bad]
        cfg = format_config(e.config)
        table.add_row(k.gpu, k.kernel, k.dtype, "yes" if k.causal else "no", str(k.batch), str(k.heads),
                      str(k.seq_len), str(k.head_dim), cfg, f"{e.median_us:.1f}", f"{e.tflops:.1f}",
                      "yes" if not stale else "stale: " + ", ".join(stale))
    make_console().print(table)


def export_winners(db: Path | None, fmt: str, output: Path | None) -> None:
    from cache import write_csv, write_json

    from ._profiles import cuda_device
    from ._toolchain import provenance

    if fmt not in ("json", "csv"):
        raise AutotuneError(f"unknown format {fmt!r}; choose json or csv")
    with _open_existing(db) as store:
        entries = store.winners()
    if fmt == "json":
        device = cuda_device() or ("cpu", "cpu")
        text = write_json(entries, output, provenance=provenance(*device))
    else:
        text = write_csv(entries, output)
    if output is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        make_console(stderr=True).print(f"wrote {len(entries)} entries to {output}")


def import_winners(db: Path | None, file: Path, replace: bool) -> None:
    from cache import CacheStore, read_table

    entries = read_table(file)
    with CacheStore.open(resolve_db(db)) as store:
        written = store.import_entries(entries, replace=replace)
    make_console(stderr=True).print(f"imported {written} of {len(entries)} entries from {file}"
                               + ("" if replace else " (existing faster winners kept)"))


def show_misses(db: Path | None) -> None:
    from ._misses import read_misses

    path = resolve_db(db)
    misses = read_misses(path)
    table = Table(title=f"{len(misses)} missed shapes ({path}.misses.jsonl)")
    for col in ("gpu", "kernel", "dtype", "causal", "B", "H", "S", "D", "lookups"):
        table.add_column(col)
    for m, n in misses:
        table.add_row(m["gpu"], m["kernel"], m["dtype"], "yes" if m["causal"] else "no", str(m["batch"]),
                      str(m["heads"]), str(m["seq_len"]), str(m["head_dim"]), str(n))
    make_console().print(table)
    if misses:
        make_console(stderr=True).print("tune them with: autotune sweep --from-misses" + (f" --db {db}" if db else ""))
