"""The report rows of a run date, read through the registry (tasks.common.reports)."""

from __future__ import annotations

import datetime

import duckdb
import pandas as pd

from tasks.common.reports import (
    GMAIL_BY_AGE_GROUP,
    parameters,
    published_reports,
    report,
    stored_query,
)
from tasks.common.sqlfiles import read_sql


def report_rows(con: duckdb.DuckDBPyConnection, key: str, run_date: datetime.date) -> pd.DataFrame:
    """One report's rows for run_date, without run columns: stored ones, else computed now."""
    entry = report(key)
    sql = stored_query(entry) if entry.stored else entry.query()
    return con.execute(sql, parameters(sql, run_date=run_date)).df()


def report_results(
    con: duckdb.DuckDBPyConnection, run_date: datetime.date
) -> dict[str, pd.DataFrame]:
    """The rows of every published report for run_date, keyed by artifact key, in order."""
    return {entry.key: report_rows(con, entry.key, run_date) for entry in published_reports()}


def gmail_by_age_group(con: duckdb.DuckDBPyConnection, run_date: datetime.date) -> pd.DataFrame:
    """Stored Gmail users per age group for run_date, every group present, in label order."""
    return report_rows(con, GMAIL_BY_AGE_GROUP.key, run_date)


def report_history(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """German Gmail share (with both counts) for every stored run date, oldest first."""
    # The Germany report's table over time: disclosure hides its counts as that report's.
    return con.execute(read_sql("report_history")).df()
