"""Where a sweep's Optuna studies live: a journal file next to the cache (default), another journal, or an RDB
shared by several hosts (``--storage``). Optuna is imported inside the functions only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flashcore.cache import CacheStore

from .worker import Flock


def study_journal(store: CacheStore) -> Path | None:
    """The Optuna journal of the studies of ``store`` (None for an in-memory store)."""
    return None if store.path is None else Path(f"{store.path}.optuna.log")


def make_storage(url: str) -> Any:
    """The Optuna storage named by ``--storage``: ``journal:PATH`` (a journal file, flock-locked) or an RDB URL
    (``postgresql://user@host/db``, ``sqlite:///path``, ...) for :class:`optuna.storages.RDBStorage`.

    Raises ``AutotuneError`` (one line) for a malformed URL, a missing database driver or an unreachable server.
    """
    from ..core.errors import AutotuneError

    url = url.strip()
    if url.startswith("journal:"):
        path = url[len("journal:"):]
        if not path:
            raise AutotuneError("--storage journal:PATH needs a file path")
        return journal_storage(path)
    if "://" not in url:
        raise AutotuneError(f"--storage {url!r}: expected an RDB URL (postgresql://user@host/db, sqlite:///file.db)"
                            " or journal:PATH")
    from optuna.storages import RDBStorage

    try:
        return RDBStorage(_with_driver(url))
    except ImportError as exc:
        raise AutotuneError(f"--storage: no database driver for {url.split('://')[0]}: {exc}") from None
    except Exception as exc:  # sqlalchemy's errors: bad URL, server down, authentication
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AutotuneError(f"--storage: cannot open {redact(url)}: {msg}") from None


def _with_driver(url: str) -> str:
    """``postgresql://`` with the PostgreSQL driver that is installed: SQLAlchemy 2.1 defaults to psycopg (3),
    many hosts have psycopg2."""
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def redact(url: str) -> str:
    """``url`` without its password."""
    import re

    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def journal_storage(path: str | Path) -> Any:
    """An Optuna journal at ``path``, locked with flock instead of Optuna's lock files (which a killed process
    leaves behind for their 30 s grace period)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path), lock_obj=Flock(f"{path}.flock")))  # type: ignore[arg-type]


def default_storage(store: CacheStore) -> Any:
    """The journal next to ``store``'s file (None, Optuna's in-memory storage, for an in-memory store)."""
    journal = study_journal(store)
    return None if journal is None else journal_storage(journal)
