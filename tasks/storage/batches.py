"""A run date's batch in DuckDB: the analytical rows, their report rows and the shareable
extract, each replacing the date's previous rows inside the caller's transaction."""

from __future__ import annotations

import datetime

import duckdb
import pyarrow as pa

from tasks.common.errors import BatchError
from tasks.common.reports import parameters, stored_reports
from tasks.common.schemas import ANALYTICAL_SCHEMA
from tasks.common.sqlfiles import read_sql
from tasks.common.tasks import as_task

# Identifiers cannot be bound as parameters, so these two statements are formatted with a stored
# report's table name (from the registry, which checks it) and its query read from its SQL file;
# every value is still bound. `by name` makes a report's column names part of the contract.
_DELETE_REPORT = "delete from {table} where run_date = $run_date"
_STORE_REPORT = """
insert into {table} by name
select $run_date::date as run_date, $flow_run_id as flow_run_id, report.*
from (
{query}
) as report
"""

# The name under which stage_shareable registers the extract for insert_shareable.sql.
_SHAREABLE_VIEW = "shareable_batch"

# The name under which stage_batch registers the Arrow batch for insert_batch.sql.
_BATCH_VIEW = "analytical_batch"


def store_reports(
    con: duckdb.DuckDBPyConnection, run_date: datetime.date, flow_run_id: str
) -> None:
    """Replace run_date's rows in every stored report's table (call inside a transaction)."""
    for report in stored_reports():
        con.execute(_DELETE_REPORT.format(table=report.sql), {"run_date": run_date})
        statement = _STORE_REPORT.format(table=report.sql, query=report.query())
        con.execute(statement, parameters(statement, run_date=run_date, flow_run_id=flow_run_id))


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
    return int(loaded)


stage_batch_task = as_task(stage_batch)


def stage_shareable(
    con: duckdb.DuckDBPyConnection,
    table: pa.Table,
    run_date: datetime.date,
    flow_run_id: str | None = None,
) -> int:
    """Replace run_date's rows in persons_shareable (inside the caller's transaction)."""
    if "person_key" in table.column_names:
        raise ValueError("the shareable extract must not carry person_key")
    con.register(_SHAREABLE_VIEW, table)
    try:
        con.execute(read_sql("delete_shareable"), {"run_date": run_date})
        con.execute(
            read_sql("insert_shareable"), {"run_date": run_date, "flow_run_id": flow_run_id}
        )
        # fetchall: a result left open would block the view's unregister below.
        ((loaded,),) = con.execute(read_sql("count_shareable"), {"run_date": run_date}).fetchall()
    finally:
        con.unregister(_SHAREABLE_VIEW)
    return int(loaded)
