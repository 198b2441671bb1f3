"""SQL lives in files under tasks/sql/; this loads them by name."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
_SQL_NAME = re.compile(r"^[a-z0-9_]+$")


@cache
def read_sql(name: str, folder: Path = SQL_DIR) -> str:
    """The text of {folder}/{name}.sql, tasks/sql/ unless told (read once per process)."""
    # The name becomes a path: keep it to plain file names so nothing outside sql/ can be read.
    if not _SQL_NAME.match(name):
        raise ValueError(f"invalid SQL file name: {name!r}")
    path = folder / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no SQL file {path}")
    return path.read_text(encoding="utf-8")
