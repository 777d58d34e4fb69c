"""Helpers for tests that run real ``python -m flashcore.autotune`` processes in Triton's interpreter."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep_cmd(db: Path, *extra: str) -> list[str]:
    """``autotune sweep`` of the smoke grid on the cpu profile into ``db``."""
    return [sys.executable, "-m", "flashcore.autotune", "sweep", "--gpu", "cpu", "--grid", "smoke", "--db", str(db), *extra]


def child_env() -> dict[str, str]:
    return {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}


def rows(db: Path, sql: str) -> list[tuple]:
    """``sql``'s rows in ``db``; [] while its tables do not exist yet."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()
