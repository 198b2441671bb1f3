"""Numbered schema migrations (tasks/sql/NNNN_name.sql), each applied once, in order."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from tasks.common.reports import stored_reports
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
    check_report_tables(con)
    return newly_applied


def check_report_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Refuse a stored report (tasks.common.reports) whose table lacks a column it stores."""
    for report in stored_reports():
        rows = con.execute(read_sql("table_columns"), {"table_name": report.sql}).fetchall()
        have = {row[0] for row in rows}
        if missing := [c for c in ("run_date", "flow_run_id", *report.columns) if c not in have]:
            raise RuntimeError(
                f"report {report.key!r} is stored in table {report.sql}, which lacks columns "
                f"{missing}: add them in a new numbered migration (tasks/sql/NNNN_name.sql)"
            )
