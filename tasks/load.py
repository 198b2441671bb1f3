"""DuckDB: connection, numbered migrations, run metadata and the idempotent batch load."""

from __future__ import annotations

import datetime
import fcntl
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tasks.errors import BatchError, PipelineError
from tasks.schemas import ANALYTICAL_SCHEMA
from tasks.sqlfiles import SQL_DIR, read_sql

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# Report history tables, each filled by the report query of the same name (tasks/sql/<name>.sql).
REPORT_TABLES = (
    "report_germany_gmail_share",
    "report_top_gmail_countries",
    "report_gmail_users_over_60",
    "report_gmail_by_age_group",
)

# Identifiers cannot be bound as parameters, so these two statements are formatted with a table
# name from REPORT_TABLES (a constant, never caller input) and a query read from tasks/sql/;
# every value is still bound. `by name` makes a report's column names part of the contract.
_DELETE_REPORT = "delete from {table} where run_date = $run_date"
_STORE_REPORT = """
insert into {table} by name
select $run_date::date as run_date, $flow_run_id as flow_run_id, report.*
from (
{query}
) as report
"""

# The name under which load_batch registers the Arrow batch for insert_batch.sql.
_BATCH_VIEW = "analytical_batch"

# Columns finish_run may set; identity and the fields it owns are excluded.
_RUN_KEY_COLUMNS = frozenset({"flow_run_id", "status", "finished_at"})


def connect(db_path: Path) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) the DuckDB database file, creating its directory first."""
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(str(db_path))


class DatabaseBusyError(PipelineError):
    """Another run held the DuckDB file for longer than the lock timeout."""


@contextmanager
def open_db(db_path: Path, timeout: float = 600.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection held under an exclusive file lock, so concurrent runs wait their turn.

    DuckDB allows one writing process per file and fails at once otherwise; the lock turns that
    failure into a bounded wait. The OS drops the lock when a process dies, even by SIGKILL.
    """
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with open(db_path.with_name(db_path.name + ".lock"), "a+") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DatabaseBusyError(
                        f"{db_path} is busy: another run held it for over {timeout:.0f}s "
                        "(DUCKDB_LOCK_TIMEOUT_SECONDS)"
                    ) from None
                time.sleep(0.05)  # polling a lock: flock has no timed wait
        try:
            with connect(db_path) as con:
                yield con
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def utc_now() -> datetime.datetime:
    """Now, as naive UTC."""
    # Timestamp columns hold naive UTC so they do not depend on the session's time zone setting.
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Begin; commit if the block ends normally, roll back (and re-raise) otherwise."""
    con.begin()
    try:
        yield
    except BaseException:
        con.rollback()
        raise
    con.commit()


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
    if con.execute(read_sql("migrations_table_exists")).fetchone()[0]:
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


def run_columns(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The metric columns finish_run accepts (pipeline_runs grows with migrations)."""
    return set(_table_columns(con, "pipeline_runs")) - _RUN_KEY_COLUMNS


def _table_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    rows = con.execute(read_sql("table_columns"), {"table_name": table}).fetchall()
    return [row[0] for row in rows]


def start_run(
    con: duckdb.DuckDBPyConnection,
    flow_run_id: str,
    run_date: datetime.date,
    records_requested: int,
) -> None:
    """Record a flow run as `running` (resetting the row if this flow run id was seen before)."""
    con.execute(
        read_sql("start_run"),
        {
            "flow_run_id": flow_run_id,
            "run_date": run_date,
            "started_at": utc_now(),
            "records_requested": records_requested,
        },
    )


def finish_run(
    con: duckdb.DuckDBPyConnection, flow_run_id: str, status: str, **metrics: Any
) -> None:
    """Set a run's status, finished_at and any given pipeline_runs metric columns."""
    allowed = run_columns(con)
    unknown = sorted(set(metrics) - allowed)
    if unknown:
        raise ValueError(f"unknown pipeline_runs columns: {unknown}; allowed: {sorted(allowed)}")
    values = {"flow_run_id": flow_run_id, "status": status, "finished_at": utc_now(), **metrics}
    columns = list(values)
    # Column names are checked against the table above; values are bound as $name parameters.
    # An upsert, so a run that failed before start_run still leaves its record behind.
    statement = (
        f"insert into pipeline_runs ({', '.join(columns)})\n"
        f"values ({', '.join(f'${column}' for column in columns)})\n"
        "on conflict (flow_run_id) do update set "
        + ", ".join(f"{column} = excluded.{column}" for column in columns[1:])
    )
    con.execute(statement, values)


def _as_subquery(query: str) -> str:
    # A report file is a standalone statement; as a subquery it must lose its final semicolon.
    return query.strip().removesuffix(";")


def store_reports(
    con: duckdb.DuckDBPyConnection, run_date: datetime.date, flow_run_id: str
) -> None:
    """Replace run_date's rows in every report history table (call inside a transaction)."""
    for table in REPORT_TABLES:
        con.execute(_DELETE_REPORT.format(table=table), {"run_date": run_date})
        con.execute(
            _STORE_REPORT.format(table=table, query=_as_subquery(read_sql(table))),
            {"run_date": run_date, "flow_run_id": flow_run_id},
        )


def stage_batch(
    con: duckdb.DuckDBPyConnection,
    analytical: pa.Table,
    run_date: datetime.date,
    flow_run_id: str,
) -> int:
    """Replace run_date's batch and its report rows (inside the caller's transaction)."""
    missing = sorted(set(ANALYTICAL_SCHEMA.names) - set(analytical.column_names))
    if missing:
        raise BatchError(f"analytical batch lacks columns {missing}")
    con.register(_BATCH_VIEW, analytical)
    try:
        con.execute(read_sql("delete_batch"), {"run_date": run_date})
        con.execute(read_sql("insert_batch"), {"flow_run_id": flow_run_id})
        # fetchall: a result left open would block the view's unregister below.
        ((loaded,),) = con.execute(read_sql("count_batch"), {"run_date": run_date}).fetchall()
        # Rows dated otherwise would land in (and corrupt) another date's batch.
        if loaded != analytical.num_rows:
            raise BatchError(
                f"analytical batch has {analytical.num_rows} rows but only {loaded} are "
                f"dated {run_date.isoformat()}"
            )
        store_reports(con, run_date, flow_run_id)
    finally:
        con.unregister(_BATCH_VIEW)
    return loaded


def load_batch(
    con: duckdb.DuckDBPyConnection,
    analytical: pa.Table,
    run_date: datetime.date,
    flow_run_id: str,
) -> int:
    """Replace run_date's batch and its report rows in one transaction; return rows loaded."""
    with transaction(con):
        return stage_batch(con, analytical, run_date, flow_run_id)


def last_source_schema(con: duckdb.DuckDBPyConnection) -> str | None:
    """The source signature of the last successful run, if any."""
    rows = con.execute(read_sql("last_source_schema")).fetchall()
    row = rows[0] if rows else None
    return row[0] if row else None


def completed_dates(
    con: duckdb.DuckDBPyConnection, start_date: datetime.date, end_date: datetime.date
) -> set[datetime.date]:
    """Dates in [start_date, end_date] that already hold a batch from a completed run."""
    rows = con.execute(
        read_sql("completed_dates"), {"start_date": start_date, "end_date": end_date}
    ).fetchall()
    return {row[0] for row in rows}


def set_run_process(con: duckdb.DuckDBPyConnection, flow_run_id: str) -> None:
    """Tag a run with this host and process id, so a later check can tell if it died."""
    con.execute(
        read_sql("set_run_process"),
        {"host": socket.gethostname(), "pid": os.getpid(), "flow_run_id": flow_run_id},
    )
