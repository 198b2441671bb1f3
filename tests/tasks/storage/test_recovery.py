"""tasks.storage.recovery: what a killed run leaves between its commit steps is repaired."""

from __future__ import annotations

import datetime
import socket
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.storage.lake import AtomicParquetWriter, file_run_id, raw_path, temp_files
from tasks.storage.recovery import check, rerun_command
from tasks.storage.runs import set_run_process, start_run
from tests.builders import german_gmail_batch
from tests.helpers import committed_batch, dead_pid

DAY = datetime.date(2026, 8, 20)


def run_row(con: duckdb.DuckDBPyConnection, run_id: str, status: str, pid: int) -> None:
    """A pipeline_runs row of `run_id` in `status`, owned by process `pid` on this host."""
    start_run(con, run_id, DAY, 10)
    con.execute(
        "update pipeline_runs set status = ?, host = ?, pid = ? where flow_run_id = ?",
        [status, socket.gethostname(), pid, run_id],
    )


def lake_file(lake: Path, run_id: str, *, staged: bool = False) -> Path:
    """The date's raw lake file written by `run_id` (staged under its temp name, or in place)."""
    writer = AtomicParquetWriter(
        raw_path(lake, DAY), pa.schema([("x", pa.int64())]), {"flow_run_id": run_id}, run_id
    )
    writer.write(pa.table({"x": [1, 2]}))
    return writer.finish() if staged else writer.commit()


def statuses(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return dict(con.execute("select flow_run_id, status from pipeline_runs").fetchall())


def test_runs_of_dead_processes_are_marked_abandoned(con: duckdb.DuckDBPyConnection, tmp_path):
    run_row(con, "crashed", "running", dead_pid())
    start_run(con, "alive", DAY, 10)
    set_run_process(con, "alive")
    findings = check(con, tmp_path / "lake")
    assert [(f.repaired, "crashed" in f.what) for f in findings] == [(True, True)]
    assert statuses(con) == {"crashed": "abandoned", "alive": "running"}
    assert check(con, tmp_path / "lake") == []  # a live run (this process) is left alone


def test_a_committed_staged_file_is_rolled_forward(con: duckdb.DuckDBPyConnection, tmp_path):
    lake = tmp_path / "lake"
    lake_file(lake, "old")
    committed_batch(con, german_gmail_batch(4, DAY), DAY, "new")  # DuckDB committed run "new" ...
    run_row(con, "new", "committed", dead_pid())
    staged = lake_file(lake, "new", staged=True)  # ... which died before its rename
    findings = check(con, lake)
    assert file_run_id(raw_path(lake, DAY)) == "new" and not staged.exists()
    lines = sorted(f.line() for f in findings)
    assert any("rolled the raw file of committed run new into place (repaired)" in x for x in lines)
    # Its artifacts were never published: only a rerun of the date does that.
    assert any(f"repair with: {rerun_command(DAY)}" in x for x in lines), lines
    assert statuses(con)["new"] == "failed"
    assert check(con, lake) == []


def test_a_staged_file_that_was_never_committed_is_removed(con, tmp_path) -> None:
    lake = tmp_path / "lake"
    lake_file(lake, "old")
    committed_batch(con, german_gmail_batch(4, DAY), DAY, "old")
    run_row(con, "killed", "running", dead_pid())
    lake_file(lake, "killed", staged=True)
    findings = check(con, lake)
    assert temp_files(lake) == [] and file_run_id(raw_path(lake, DAY)) == "old"
    assert all(f.repaired for f in findings) and len(findings) == 2
    assert statuses(con) == {"killed": "abandoned"}


def test_a_partial_staged_file_is_removed(con, tmp_path) -> None:
    lake = tmp_path / "lake"
    partial = raw_path(lake, DAY).with_name(".persons.parquet.gone.tmp")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"PAR1 half a file")
    assert [f.repaired for f in check(con, lake)] == [True] and not partial.exists()


def test_files_of_a_live_run_are_left_alone(con, tmp_path) -> None:
    lake = tmp_path / "lake"
    start_run(con, "busy", DAY, 10)
    set_run_process(con, "busy")  # this very process: alive
    staged = lake_file(lake, "busy", staged=True)
    assert check(con, lake) == [] and staged.exists()


def test_a_date_whose_layers_disagree_names_the_command(con, tmp_path) -> None:
    lake = tmp_path / "lake"
    lake_file(lake, "r3")
    committed_batch(con, german_gmail_batch(4, DAY), DAY, "r1")
    (finding,) = check(con, lake)
    assert not finding.repaired and finding.command == rerun_command(DAY)
    assert "raw file is from run r3, persons_anonymized rows from r1" in finding.line()
    assert pq.read_table(raw_path(lake, DAY)).num_rows == 2  # nothing deleted


def test_rows_without_a_lake_file_name_the_command(con, tmp_path) -> None:
    committed_batch(con, german_gmail_batch(4, DAY), DAY, "r1")
    (tmp_path / "lake").mkdir()
    (finding,) = check(con, tmp_path / "lake")
    assert "there is no raw file, persons_anonymized rows from r1" in finding.line()
    assert finding.command == rerun_command(DAY)
