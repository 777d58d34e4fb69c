"""FlashCore's tuning cache: the SQLite store of winners and trials, and the exported table format.

Importing this package has no side effects: nothing is opened or created until ``CacheStore.open`` is called.
"""

from ._errors import CacheError, TableError, TableTooLarge
from .merge import MergeReport, merge_caches
from .migrations import SCHEMA_VERSION
from .store import CacheStore
from .table_format import FORMAT_VERSION, entry_to_dict, export_table, parse_table, read_table, write_csv, write_json
from ._types import (DEFAULT_FP8_TOL, DTYPES, ELEMENT_BYTES, FIGURES, HALF_DTYPES, TRIAL_STATUSES, CacheKey, Entry,
                     TrialRecord, base_dtype,
                     figures_of, fp8_dtype, fp8_tol, normalize_problem)

__all__ = [
    "DEFAULT_FP8_TOL",
    "DTYPES",
    "ELEMENT_BYTES",
    "FIGURES",
    "FORMAT_VERSION",
    "HALF_DTYPES",
    "SCHEMA_VERSION",
    "TRIAL_STATUSES",
    "CacheError",
    "CacheKey",
    "CacheStore",
    "Entry",
    "MergeReport",
    "TableError",
    "TableTooLarge",
    "TrialRecord",
    "base_dtype",
    "entry_to_dict",
    "export_table",
    "figures_of",
    "fp8_dtype",
    "fp8_tol",
    "merge_caches",
    "normalize_problem",
    "parse_table",
    "read_table",
    "write_csv",
    "write_json",
]
