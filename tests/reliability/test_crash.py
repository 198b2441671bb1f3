"""Crash safety: SIGKILL a real pipeline process during the lake write and during the DuckDB load.

Afterwards the lake must hold no partial file, DuckDB exactly the old batch of the date, and the
next run must succeed and leave exactly one batch.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.user_metrics import user_metrics_pipeline
from local_api.server import LocalApiServer
from tests.reliability.conftest import (
    PYTHON,
    ROOT,
    db_query,
    lake_file,
    snapshot,
    temp_files,
    wait_for,
)

RUN_DATE = dt.date(2026, 8, 20)
OLD_RECORDS = 300
NEW_RECORDS = 500
RUNNER = Path(__file__).with_name("crash_runner.py")


def start_runner(
    stage: str, marker: Path, env: dict[str, str], cli_args: list[str], release: Path | None = None
) -> subprocess.Popen:
    """The pipeline CLI in a subprocess that stops at `stage` and writes `marker` there."""
    head = [stage, str(marker)] + ([str(release)] if release else [])
    return subprocess.Popen(
        [PYTHON, str(RUNNER), *head, "--", *cli_args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_marker(proc: subprocess.Popen, marker: Path, timeout: float = 180) -> None:
    """Wait until the subprocess reached its stage; fail with its output if it exited first."""
    wait_for(lambda: marker.exists() or proc.poll() is not None, timeout, f"marker {marker.name}")
    if not marker.exists():
        out, err = proc.communicate()
        raise AssertionError(f"runner exited {proc.returncode} before its stage:\n{out}\n{err}")


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL: no handler, no finally block, no atexit runs."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["lake-write", "duckdb-load"])
def test_sigkill_leaves_old_batch_and_next_run_succeeds(
    stage: str,
    api: LocalApiServer,
    reliability_env,
    subprocess_env: dict[str, str],
    paths: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    lake, db = paths
    old = user_metrics_pipeline(
        api_url=api.base_url, records=OLD_RECORDS, page_size=100, run_date=RUN_DATE
    )
    before = snapshot(lake, db, RUN_DATE)
    assert len(before.rows) == OLD_RECORDS and before.flow_run_ids == {old["flow_run_id"]}

    marker = tmp_path / f"{stage}.marker"
    cli = ["--api-url", api.base_url, "--records", str(NEW_RECORDS), "--page-size", "100"]
    proc = start_runner(stage, marker, subprocess_env, [*cli, "--run-date", str(RUN_DATE)])
    try:
        wait_for_marker(proc, marker)
        if stage == "lake-write":
            # The kill must land while a half-written temp file is on disk, or it proves little.
            assert Path(marker.read_text()).exists()
    finally:
        if proc.poll() is None:
            kill(proc)

    target = lake_file(lake, RUN_DATE)
    after = snapshot(lake, db, RUN_DATE)
    # DuckDB: exactly the old batch (the killed transaction never committed; WAL replay drops it).
    assert after.rows == before.rows and after.reports == before.reports
    if stage == "lake-write":
        assert after.lake_bytes == before.lake_bytes, "the previous lake file changed"
    else:
        # The lake file was renamed into place before the load: whole, with the new batch.
        assert pq.read_table(target).num_rows in (OLD_RECORDS, NEW_RECORDS)
    leftovers = temp_files(lake)
    killed = db_query(
        db,
        "select flow_run_id, status from pipeline_runs where run_date = ? and flow_run_id <> ?",
        [RUN_DATE, old["flow_run_id"]],
    )
    print(f"{stage}: temp files after the kill: {[p.name for p in leftovers]}")
    print(f"{stage}: pipeline_runs of the killed run: {killed}")
    assert [status for _, status in killed] == ["running"], killed

    # The next run takes over the date cleanly, in-process (it re-opens the killed run's file).
    new = user_metrics_pipeline(
        api_url=api.base_url, records=NEW_RECORDS, page_size=100, run_date=RUN_DATE
    )
    final = snapshot(lake, db, RUN_DATE)
    assert len(final.rows) == NEW_RECORDS and final.flow_run_ids == {new["flow_run_id"]}
    assert pq.read_table(target).num_rows == NEW_RECORDS
    # "The lake has no partial file": a dot-temp file left by the killed writer is one.
    assert not temp_files(lake), f"partial files left in the lake: {temp_files(lake)}"
    # ...and the killed run is no longer shown as running: its process is gone.
    (status,) = db_query(
        db, "select status from pipeline_runs where flow_run_id = ?", [killed[0][0]]
    )[0]
    assert status == "abandoned"
