"""tasks.storage.database: migrations, run metadata and the idempotent, transactional batch load."""

from __future__ import annotations

import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

import tasks.common.reports
import tasks.storage.database
from tasks.common.reports import stored_reports
from tasks.common.schemas import AGE_BANDS
from tasks.common.sqlfiles import SQL_DIR, read_sql
from tasks.storage.database import connect
from tasks.storage.migrations import migrate, migration_files
from tasks.storage.runs import finish_run, start_run
from tests.builders import AGE_GROUP_LABELS, german_gmail_batch
from tests.helpers import committed_batch

DAY_1 = datetime.date(2024, 5, 1)
DAY_2 = datetime.date(2024, 5, 2)


def batch_rows(con: duckdb.DuckDBPyConnection, run_date: datetime.date) -> list[tuple]:
    return con.execute(
        "select person_key, flow_run_id from persons_anonymized where run_date = ? order by 1",
        [run_date],
    ).fetchall()


def stored_share(con: duckdb.DuckDBPyConnection, run_date: datetime.date) -> list[tuple]:
    return con.execute(
        "select german_users, german_gmail_users, gmail_share_pct, flow_run_id "
        "from report_germany_gmail_share where run_date = ?",
        [run_date],
    ).fetchall()


def test_connect_creates_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "faker.duckdb"
    connect(path).close()
    assert path.is_file()


def test_migrations_apply_once(tmp_path: Path) -> None:
    path = tmp_path / "faker.duckdb"
    con = connect(path)
    expected = [version for version, _, _ in migration_files()]
    assert expected[0] == 1
    assert migrate(con) == expected
    assert migrate(con) == []
    con.close()
    # A new process (connection) sees the recorded versions too.
    con = connect(path)
    assert migrate(con) == []
    recorded = con.execute("select version, name from schema_migrations order by 1").fetchall()
    assert recorded == [(version, name) for version, name, _ in migration_files()]
    tables = {
        row[0] for row in con.execute("select table_name from information_schema.tables").fetchall()
    }
    assert {
        "schema_migrations",
        "persons_anonymized",
        "pipeline_runs",
        "age_groups",
        *(report.sql for report in stored_reports()),
    } <= tables
    con.close()


def test_age_groups_dimension_matches_schema(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.execute(
        "select age_group, lower_bound, upper_bound from age_groups order by position"
    ).fetchall()
    assert [row[0] for row in rows] == list(AGE_GROUP_LABELS)
    assert [row[1] for row in rows] == list(range(0, 100, 10))
    assert [row[2] for row in rows] == [*range(10, 100, 10), None]
    # The migration's rows are the one definition of the bands, not a copy that may drift.
    assert rows == [(band.label, band.lower, band.upper) for band in AGE_BANDS]


def test_migration_files_are_numbered_without_gaps() -> None:
    versions = [version for version, _, _ in migration_files()]
    assert versions == list(range(1, len(versions) + 1))


def test_no_sql_file_drops_a_table() -> None:
    files = list(SQL_DIR.glob("*.sql"))
    assert files
    for path in files:
        text = " ".join(path.read_text(encoding="utf-8").lower().split())
        assert "drop table" not in text, path.name
    root = Path(tasks.storage.database.__file__).resolve().parents[2]
    sources = [*root.glob("tasks/**/*.py"), *root.glob("flows/*.py")]
    assert len(sources) > 20
    for path in sources:
        assert "drop table" not in path.read_text(encoding="utf-8").lower(), path.name


def test_read_sql_rejects_paths() -> None:
    assert "persons_anonymized" in read_sql("delete_batch")
    with pytest.raises(ValueError):
        read_sql("../load")
    with pytest.raises(FileNotFoundError):
        read_sql("no_such_file")


def test_start_and_finish_run(con: duckdb.DuckDBPyConnection) -> None:
    start_run(con, "run-1", DAY_1, 100)
    row = con.execute(
        "select run_date, status, records_requested, started_at, finished_at from pipeline_runs"
    ).fetchone()
    assert row[:3] == (DAY_1, "running", 100)
    assert row[3] is not None and row[4] is None

    finish_run(
        con,
        "run-1",
        "completed",
        records_fetched=100,
        records_loaded=99,
        pages=1,
        seconds_total=1.25,
        source_schema="v2",
    )
    row = con.execute(
        "select status, records_fetched, records_loaded, pages, seconds_total, source_schema, "
        "finished_at >= started_at, seconds_fetch from pipeline_runs where flow_run_id = 'run-1'"
    ).fetchone()
    assert row == ("completed", 100, 99, 1, 1.25, "v2", True, None)


def test_start_run_again_resets_the_row(con: duckdb.DuckDBPyConnection) -> None:
    start_run(con, "run-1", DAY_1, 100)
    finish_run(con, "run-1", "failed", error="boom")
    start_run(con, "run-1", DAY_2, 200)
    rows = con.execute(
        "select run_date, status, records_requested, finished_at, error from pipeline_runs"
    ).fetchall()
    assert rows == [(DAY_2, "running", 200, None, None)]


def test_finish_run_rejects_unknown_columns(con: duckdb.DuckDBPyConnection) -> None:
    start_run(con, "run-1", DAY_1, 100)
    with pytest.raises(ValueError, match="unknown pipeline_runs columns"):
        finish_run(con, "run-1", "completed", **{"records_loaded = 0; --": 1})
    with pytest.raises(ValueError, match="unknown pipeline_runs columns"):
        finish_run(con, "run-1", "completed", finished_at=datetime.datetime(2000, 1, 1))
    assert con.execute("select status from pipeline_runs").fetchall() == [("running",)]


def test_finish_run_without_start_still_records(con: duckdb.DuckDBPyConnection) -> None:
    finish_run(con, "run-x", "failed", error="fetch failed")
    rows = con.execute("select flow_run_id, status, error, started_at from pipeline_runs")
    assert rows.fetchall() == [("run-x", "failed", "fetch failed", None)]


def test_load_is_idempotent(con: duckdb.DuckDBPyConnection) -> None:
    batch = german_gmail_batch(10, DAY_1)
    for attempt in range(3):
        assert committed_batch(con, batch, DAY_1, f"run-{attempt}") == 10
    rows = batch_rows(con, DAY_1)
    assert len(rows) == 10
    assert {flow_run_id for _, flow_run_id in rows} == {"run-2"}
    # Reports were replaced with the batch, not appended to.
    assert stored_share(con, DAY_1) == [(5, 5, 100.0, "run-2")]
    assert con.execute("select count(*) from report_gmail_by_age_group").fetchone() == (10,)


def test_rerun_with_a_smaller_batch_replaces_rows(con: duckdb.DuckDBPyConnection) -> None:
    committed_batch(con, german_gmail_batch(10, DAY_1), DAY_1, "run-1")
    assert committed_batch(con, german_gmail_batch(3, DAY_1, prefix="q"), DAY_1, "run-2") == 3
    assert batch_rows(con, DAY_1) == [("q-0", "run-2"), ("q-1", "run-2"), ("q-2", "run-2")]
    assert stored_share(con, DAY_1) == [(2, 2, 100.0, "run-2")]


def test_loading_another_date_leaves_the_first_untouched(con: duckdb.DuckDBPyConnection) -> None:
    committed_batch(con, german_gmail_batch(4, DAY_1), DAY_1, "run-1")
    before = batch_rows(con, DAY_1)
    share_before = stored_share(con, DAY_1)
    committed_batch(con, german_gmail_batch(6, DAY_2, prefix="d2"), DAY_2, "run-2")
    assert batch_rows(con, DAY_1) == before
    assert stored_share(con, DAY_1) == share_before
    assert len(batch_rows(con, DAY_2)) == 6
    assert stored_share(con, DAY_2) == [(3, 3, 100.0, "run-2")]


def test_failed_insert_keeps_previous_batch(con: duckdb.DuckDBPyConnection) -> None:
    committed_batch(con, german_gmail_batch(4, DAY_1), DAY_1, "run-1")
    before, share_before = batch_rows(con, DAY_1), stored_share(con, DAY_1)
    # Wrong type: run_date as text that is not a date. The delete has already run when DuckDB
    # fails on the cast, so only the rollback can bring the old batch back.
    bad = german_gmail_batch(5, DAY_1).set_column(
        1, pa.field("run_date", pa.string()), pa.array(["not a date"] * 5)
    )
    with pytest.raises(duckdb.Error):
        committed_batch(con, bad, DAY_1, "run-2")
    assert batch_rows(con, DAY_1) == before
    assert stored_share(con, DAY_1) == share_before
    # The connection is usable afterwards (the transaction was closed, not left aborted).
    assert committed_batch(con, german_gmail_batch(2, DAY_1), DAY_1, "run-3") == 2


def test_failed_report_keeps_previous_batch_and_reports(
    con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    committed_batch(con, german_gmail_batch(4, DAY_1), DAY_1, "run-1")
    before, share_before = batch_rows(con, DAY_1), stored_share(con, DAY_1)
    real_read_sql = tasks.common.reports.read_sql
    last = stored_reports()[-1].sql

    def broken_last_report(name: str, folder: Path = SQL_DIR) -> str:
        # The last report fails after the batch and the other reports were already rewritten.
        if name == last:
            return "select no_such_column from persons_anonymized"
        return real_read_sql(name, folder)

    monkeypatch.setattr(tasks.common.reports, "read_sql", broken_last_report)
    with pytest.raises(duckdb.Error):
        committed_batch(con, german_gmail_batch(8, DAY_1, prefix="new"), DAY_1, "run-2")
    assert batch_rows(con, DAY_1) == before
    assert stored_share(con, DAY_1) == share_before


def test_rows_of_another_date_are_rejected(con: duckdb.DuckDBPyConnection) -> None:
    committed_batch(con, german_gmail_batch(4, DAY_1), DAY_1, "run-1")
    before = batch_rows(con, DAY_1)
    mixed = pa.concat_tables(
        [german_gmail_batch(2, DAY_1, prefix="a"), german_gmail_batch(2, DAY_2, prefix="b")]
    )
    with pytest.raises(ValueError, match="dated"):
        committed_batch(con, mixed, DAY_1, "run-2")
    assert batch_rows(con, DAY_1) == before
    assert batch_rows(con, DAY_2) == []


def test_missing_columns_are_rejected(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ValueError, match="email_domain"):
        committed_batch(
            con, german_gmail_batch(2, DAY_1).drop_columns(["email_domain"]), DAY_1, "run-1"
        )


def test_empty_batch_clears_the_date(con: duckdb.DuckDBPyConnection) -> None:
    committed_batch(con, german_gmail_batch(4, DAY_1), DAY_1, "run-1")
    assert committed_batch(con, german_gmail_batch(0, DAY_1), DAY_1, "run-2") == 0
    assert batch_rows(con, DAY_1) == []
    assert stored_share(con, DAY_1) == [(0, 0, None, "run-2")]
