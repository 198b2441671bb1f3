"""The SQL reports: their keys and count columns, and the answers stored with each date's batch."""

from __future__ import annotations

import datetime
from types import MappingProxyType

import duckdb
import pandas as pd

from tasks.common.sqlfiles import read_sql
from tasks.storage.batches import REPORT_TABLES

# Artifact key -> report SQL name (tasks/sql/<name>.sql, also its history table), in the order the
# reports are published. Keys are stable so the Prefect UI keeps each report's history.
REPORTS = MappingProxyType(
    {
        "germany-gmail-share": "report_germany_gmail_share",
        "top-gmail-countries": "report_top_gmail_countries",
        "gmail-users-over-60": "report_gmail_users_over_60",
    }
)

# Supporting data for the markdown report's chart; stored like the reports, not published alone.
CHARTS = MappingProxyType({"gmail-by-age-group": "report_gmail_by_age_group"})

# The count columns of each published table, and the figures derived from them: small-cell
# suppression hides counts of fewer than k people in these, and the figures alongside.
_GERMAN_COUNTS = ("german_users", "german_gmail_users")
COUNT_COLUMNS: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]] | None]] = {
    "germany-gmail-share": (_GERMAN_COUNTS, {"gmail_share_pct": _GERMAN_COUNTS}),
    "top-gmail-countries": (("gmail_users",), None),
    "gmail-users-over-60": (("gmail_users_over_60",), None),
    "gmail-by-age-group": (("gmail_users",), None),
    "history": (_GERMAN_COUNTS, {"gmail_share_pct": _GERMAN_COUNTS}),
}


def _sql_name(name: str) -> str:
    # Accept an artifact key or a SQL name, but only for known reports: the name picks a file.
    sql_name = REPORTS.get(name) or CHARTS.get(name) or name
    if sql_name not in REPORT_TABLES:
        raise KeyError(f"unknown report {name!r}; known: {[*REPORTS, *CHARTS]}")
    return sql_name


def stored_report(
    con: duckdb.DuckDBPyConnection, name: str, run_date: datetime.date
) -> pd.DataFrame:
    """One report's stored rows for run_date (artifact key or SQL name), without run columns."""
    return con.execute(read_sql(f"stored_{_sql_name(name)}"), {"run_date": run_date}).df()


def report_results(
    con: duckdb.DuckDBPyConnection, run_date: datetime.date
) -> dict[str, pd.DataFrame]:
    """The stored answers of every published report for run_date, keyed by artifact key."""
    return {key: stored_report(con, key, run_date) for key in REPORTS}


def gmail_by_age_group(con: duckdb.DuckDBPyConnection, run_date: datetime.date) -> pd.DataFrame:
    """Stored Gmail users per age group for run_date, every group present, in label order."""
    return stored_report(con, "gmail-by-age-group", run_date)


def report_history(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """German Gmail share (with both counts) for every stored run date, oldest first."""
    return con.execute(read_sql("report_history")).df()
