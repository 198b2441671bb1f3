"""tasks.storage.runs: whether a run's reports become the latest (the newest committed date's)."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from tasks.storage.database import utc_now
from tasks.storage.runs import finish_run, newest_committed_date, publishes_latest, start_run

OLD = dt.date(2001, 1, 5)
NEWEST = dt.date(2001, 2, 5)
NEWER = dt.date(2001, 3, 5)


def committed(con: duckdb.DuckDBPyConnection, run_id: str, day: dt.date, status: str) -> None:
    """A run of `day` that got past its commit, then ended with `status`."""
    start_run(con, run_id, day, 10)
    finish_run(con, run_id, status, committed_at=utc_now())


def decide(con: duckdb.DuckDBPyConnection, day: dt.date) -> bool:
    """The decision as the commit step takes it: this run's row exists, its transaction open."""
    start_run(con, "this-run", day, 10)
    con.begin()
    try:
        return publishes_latest(con, "this-run", day)
    finally:
        con.rollback()


def test_the_first_run_ever_publishes_the_latest(con: duckdb.DuckDBPyConnection) -> None:
    assert newest_committed_date(con, "this-run") is None
    assert decide(con, OLD)


@pytest.mark.parametrize("status", ["completed", "committed"])
@pytest.mark.parametrize(("day", "latest"), [(OLD, False), (NEWEST, True), (NEWER, True)])
def test_an_older_date_than_the_newest_committed_one_does_not(
    con: duckdb.DuckDBPyConnection, status: str, day: dt.date, latest: bool
) -> None:
    committed(con, "old-run", OLD, "completed")
    committed(con, "newest-run", NEWEST, status)
    assert newest_committed_date(con, "this-run") == NEWEST
    assert decide(con, day) is latest


def test_runs_that_never_committed_do_not_count(con: duckdb.DuckDBPyConnection) -> None:
    committed(con, "old-run", OLD, "completed")
    for run_id, status in [("running", "running"), ("failed", "failed"), ("gone", "abandoned")]:
        start_run(con, run_id, NEWER, 10)
        if status != "running":
            finish_run(con, run_id, status, error="before the commit")
    assert newest_committed_date(con, "this-run") == OLD
    assert decide(con, OLD)


def test_a_run_that_failed_after_its_commit_counts(con: duckdb.DuckDBPyConnection) -> None:
    # Its batch is the date's (only its artifacts are missing): the date is committed.
    committed(con, "unpublished", NEWEST, "failed")
    assert not decide(con, OLD)


def test_the_run_itself_does_not_count(con: duckdb.DuckDBPyConnection) -> None:
    # A flow run retried by Prefect keeps its id: its first attempt's commit is not another run's.
    committed(con, "this-run", NEWEST, "completed")
    committed(con, "old-run", OLD, "completed")
    assert newest_committed_date(con, "this-run") == OLD
    assert newest_committed_date(con, "old-run") == NEWEST
