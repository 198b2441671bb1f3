"""Concurrent runs on one DuckDB file: the second waits for the file lock, both complete.

DuckDB allows one writing process per file and fails at once otherwise; the pipeline takes an
exclusive `<DUCKDB_PATH>.lock` (fcntl) around every connection, waiting up to
DUCKDB_LOCK_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from local_api.server import LocalApiServer
from tests.reliability.conftest import db_query, start_cli, start_runner, wait_for_marker

DATE_A = dt.date(2026, 7, 1)
DATE_B = dt.date(2026, 7, 2)
RECORDS = 500


def cli_args(api: LocalApiServer, day: dt.date) -> list[str]:
    """A small run of one date against the local API."""
    return [
        "--api-url",
        api.base_url,
        "--records",
        str(RECORDS),
        "--page-size",
        "100",
        "--run-date",
        day.isoformat(),
    ]


def assert_both_loaded(db: Path) -> None:
    """One batch per date, two completed runs, nothing else."""
    batches = db_query(
        db,
        "select run_date, count(*), count(distinct flow_run_id) from persons_anonymized"
        " group by run_date order by run_date",
    )
    assert batches == [(DATE_A, RECORDS, 1), (DATE_B, RECORDS, 1)]
    runs = db_query(db, "select run_date, status from pipeline_runs order by run_date")
    assert runs == [(DATE_A, "completed"), (DATE_B, "completed")]


@pytest.mark.slow
def test_two_runs_started_at_once_both_complete(
    api: LocalApiServer, subprocess_env: dict[str, str], paths: tuple[Path, Path]
) -> None:
    _, db = paths
    procs = [start_cli(cli_args(api, day), subprocess_env) for day in (DATE_A, DATE_B)]
    results = [(p.communicate(timeout=300), p.returncode) for p in procs]
    for (_, err), code in results:
        assert code == 0, err[-3000:]
    assert_both_loaded(db)


@pytest.mark.slow
def test_second_run_waits_for_the_lock_and_times_out_clearly(
    api: LocalApiServer,
    subprocess_env: dict[str, str],
    paths: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """Deterministic overlap: run A holds the DuckDB file mid-load until the test releases it."""
    _, db = paths
    held, release = tmp_path / "a.held", tmp_path / "a.release"
    run_a = start_runner("hold-load", held, subprocess_env, cli_args(api, DATE_A), release)
    procs = [run_a]
    try:
        wait_for_marker(run_a, held)
        # Both B runs start while A holds the file (in parallel, to save a process start-up):
        # one with a 1 s lock timeout must give up with a clear error, the other must queue.
        impatient = start_cli(
            cli_args(api, DATE_B), {**subprocess_env, "DUCKDB_LOCK_TIMEOUT_SECONDS": "1"}
        )
        procs.append(impatient)
        asking = tmp_path / "b.asking"
        run_b = start_runner("mark-connect", asking, subprocess_env, cli_args(api, DATE_B))
        procs.append(run_b)

        _, err = impatient.communicate(timeout=300)
        assert impatient.returncode == 1, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and "DUCKDB_LOCK_TIMEOUT_SECONDS" in last, last

        wait_for_marker(run_b, asking)
        assert run_a.poll() is None, "run A finished while it should hold the lock"
        release.write_text("go")  # B is queued for the lock now; A finishes, then B
        _, err_b = run_b.communicate(timeout=300)
        assert run_b.returncode == 0, err_b[-3000:]
        _, err_a = run_a.communicate(timeout=300)
        assert run_a.returncode == 0, err_a[-3000:]
    finally:
        release.write_text("go")
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    # The timed-out run wrote nothing: it never got the file (so it has no pipeline_runs row).
    batches = db_query(
        db,
        "select run_date, count(*), count(distinct flow_run_id) from persons_anonymized"
        " group by run_date order by run_date",
    )
    assert batches == [(DATE_A, RECORDS, 1), (DATE_B, RECORDS, 1)]
