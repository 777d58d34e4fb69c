"""Where the cache lives: --db, else $AUTOTUNE_DB, else the user's cache directory."""

from __future__ import annotations

import os
from pathlib import Path


def default_db_path() -> Path:
    """$AUTOTUNE_DB if set, else ``<user cache dir>/flashcore/autotune.db`` (platformdirs)."""
    env = os.environ.get("AUTOTUNE_DB")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("flashcore", appauthor=False)) / "autotune.db"


def resolve_db(db: str | os.PathLike | None) -> Path:
    return Path(db).expanduser() if db else default_db_path()
