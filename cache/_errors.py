"""Errors the cache raises at its boundaries: one line, user-facing, naming the problem and the file."""

from __future__ import annotations


def _one_line(message: object) -> str:
    """Collapse line breaks so a message always prints as one line."""
    return " ".join(str(message).splitlines()).strip()


class CacheError(Exception):
    """A cache file or table cannot be used; the message says why, on one line, and names the file."""

    def __init__(self, message: object) -> None:
        super().__init__(_one_line(message))


class TableError(CacheError):
    """An exported/imported table is malformed; the message names the offending field, e.g. ``entries[3].median_us``."""


class TableTooLarge(TableError):
    """A table holds more entries than the reader takes (``read_table(..., max_entries=N)``, at most the format's
    ``MAX_ENTRIES``), found before any entry is validated: ``entries`` is how many it holds, ``limit`` the bound
    it broke, ``hard`` whether that bound is the format's own (no reader takes more)."""

    def __init__(self, message: object, entries: int = 0, limit: int = 0, hard: bool = False) -> None:
        super().__init__(message)
        self.entries = entries
        self.limit = limit
        self.hard = hard
