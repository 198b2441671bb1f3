"""Run bookkeeping: a flow run's pipeline_runs row, from `running` to its end, and what a failed
run reports: what the date holds on disk, read back after the failure (which run's lake file,
DuckDB rows and extract), never what the code assumes it left.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any

import duckdb

from tasks.common.run_config import RunConfig
from tasks.common.sqlfiles import read_sql
from tasks.storage.database import DatabaseBusyError, open_db, utc_now
from tasks.storage.migrations import migrate
from tasks.storage.recovery import Finding, check, holding

# Columns finish_run may set; identity and the fields it owns are excluded.
_RUN_KEY_COLUMNS = frozenset({"flow_run_id", "status", "finished_at"})


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


def last_source_schema(con: duckdb.DuckDBPyConnection) -> str | None:
    """The source signature of the last successful run, if any."""
    rows = con.execute(read_sql("last_source_schema")).fetchall()
    row = rows[0] if rows else None
    return row[0] if row else None


def newest_committed_date(con: duckdb.DuckDBPyConnection, flow_run_id: str) -> datetime.date | None:
    """The newest run date another run has committed, None before the first commit."""
    row = con.execute(read_sql("newest_committed_date"), {"flow_run_id": flow_run_id}).fetchone()
    return row[0] if row else None


def publishes_latest(
    con: duckdb.DuckDBPyConnection, flow_run_id: str, run_date: datetime.date
) -> bool:
    """Whether the run's reports become the latest: its date is no older than any committed."""
    newest = newest_committed_date(con, flow_run_id)
    return newest is None or run_date >= newest


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


def record_start(
    cfg: RunConfig, run_id: str, lock_timeout: float
) -> tuple[str | None, list[Finding]]:
    """Migrate, repair what killed runs left, insert this run's `running` row.

    Returns the last committed source schema and what the check found.
    """
    with open_db(cfg.duckdb_path, lock_timeout, cfg.duckdb_limit) as con:
        migrate(con)
        findings = check(con, cfg.lake_dir)
        previous = last_source_schema(con)
        start_run(con, run_id, cfg.run_date, cfg.records)
        set_run_process(con, run_id)
    return previous, findings


def record_end(
    cfg: RunConfig, run_id: str, status: str, figures: dict[str, Any], lock_timeout: float
) -> None:
    """Set the run's final status and every figure that has a pipeline_runs column."""
    with open_db(cfg.duckdb_path, lock_timeout, cfg.duckdb_limit) as con:
        columns = run_columns(con)
        finish_run(con, run_id, status, **{k: v for k, v in figures.items() if k in columns})


def read_back(cfg: RunConfig, lock_timeout: float) -> dict[str, Any]:
    """What the run date holds now: each layer's run id (and row counts), read from disk."""
    reason = "none (no database)"
    if cfg.duckdb_path.exists():
        try:
            with open_db(cfg.duckdb_path, lock_timeout, cfg.duckdb_limit) as con:
                return holding(con, cfg.lake_dir, cfg.run_date)
        except DatabaseBusyError:
            reason = "not read: another run holds the database"
    return {**holding(None, cfg.lake_dir, cfg.run_date), "db": reason, "db_extract": reason}


def kept_columns(held: dict[str, Any]) -> dict[str, Any]:
    """What the date held after a failure, as pipeline_runs columns."""
    return {
        "kept_lake_run": held.get("lake"),
        "kept_db_run": held.get("db"),
        "kept_extract_run": held.get("extract"),
        "kept_quarantine": held.get("quarantine"),
    }
