"""Numbered schema migrations (tasks/sql/NNNN_name.sql), each applied once, in order."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from tasks.common.sqlfiles import SQL_DIR, read_sql
from tasks.storage.database import transaction, utc_now

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migration_files() -> list[tuple[int, str, Path]]:
    """The (version, name, path) of every tasks/sql/NNNN_name.sql migration, by version."""
    found = []
    for path in SQL_DIR.glob("*.sql"):
        match = _MIGRATION_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), match.group(2), path))
    found.sort()
    versions = [version for version, _, _ in found]
    if len(versions) != len(set(versions)):
        raise RuntimeError(f"duplicate migration versions in {SQL_DIR}: {versions}")
    return found


def migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply pending migrations in order, each once and in its own transaction; return versions."""
    applied: set[int] = set()
    ((exists,),) = con.execute(read_sql("migrations_table_exists")).fetchall()
    if exists:
        applied = {row[0] for row in con.execute(read_sql("applied_migrations")).fetchall()}
    newly_applied = []
    for version, name, path in migration_files():
        if version in applied:
            continue
        with transaction(con):
            # A migration may hold several statements and never takes parameters.
            con.execute(path.read_text(encoding="utf-8"))
            con.execute(
                read_sql("record_migration"),
                {"version": version, "name": name, "applied_at": utc_now()},
            )
        newly_applied.append(version)
    return newly_applied
