"""Crash windows: SIGKILL a real pipeline process in each window of its commit.

Before the DuckDB commit, a killed run must leave the date exactly as it was (the staged files
are leftovers, never visible). After it, the check (`--check`, or the next run's own) must roll
the staged files forward, so the date holds one run's batch in every layer, and say the run's
artifacts need a rerun. Either way the next run takes the date over cleanly.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from flows.user_metrics import user_metrics_pipeline
from local_api.server import LocalApiServer
from tests.reliability.conftest import (
    Restored,
    kill,
    run_cli,
    start_runner,
    temp_files,
    wait_for_marker,
)
from tests.reliability.drills import (
    file_run,
    latest_artifacts,
    latest_run_id,
    run_row,
    stored_date,
    zone_file,
)

RUN_DATE = dt.date(2026, 8, 20)
OLD_RECORDS = 300
NEW_RECORDS = 500
BASELINE = {"run_date": RUN_DATE, "records": OLD_RECORDS, "page_size": 100}
REPORT_KEYS = ("germany-gmail-share", "top-gmail-countries", "gmail-users-over-60")

# Where the kill lands, and whether DuckDB had committed the run's batch by then.
WINDOWS = {
    "lake-write": False,  # the staged raw file half written
    "duckdb-load": False,  # inside the DuckDB transaction, rows staged
    "db-committed": True,  # DuckDB committed, no file renamed yet
    "between-renames": True,  # the raw file renamed, the extract not
    "before-publish": True,  # both files in place, no artifact created
    "mid-publish": True,  # one artifact created
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", WINDOWS)
def test_sigkill_in_each_crash_window(
    stage: str,
    api: LocalApiServer,
    reliability_env,
    subprocess_env: dict[str, str],
    restored: Restored,
    tmp_path: Path,
) -> None:
    lake, db, before = restored.lake, restored.db, restored.before
    assert before.runs("persons_anonymized") == {restored.baseline.flow_run_id}

    marker = tmp_path / f"{stage}.marker"
    cli = ["--api-url", api.base_url, "--records", str(NEW_RECORDS), "--page-size", "100"]
    proc = start_runner(stage, marker, subprocess_env, [*cli, "--run-date", str(RUN_DATE)])
    try:
        wait_for_marker(proc, marker)
        if stage == "lake-write":
            # The kill must land while a half-written staged file is on disk, or it proves little.
            assert Path(marker.read_text()).exists()
    finally:
        if proc.poll() is None:
            kill(proc)
    killed = latest_run_id(db)
    assert killed != restored.baseline.flow_run_id
    committed = WINDOWS[stage]

    if not committed:
        # Nothing of the killed run is visible, before any repair.
        assert stored_date(lake, db, RUN_DATE) == before
        assert latest_artifacts() == restored.published
    check = run_cli(["--check"], subprocess_env)
    print(f"{stage}: --check said:\n{check.stdout}")
    after = stored_date(lake, db, RUN_DATE)
    assert not temp_files(lake), f"staged files left after the check: {temp_files(lake)}"
    row = run_row(db, killed)
    if not committed:
        assert check.returncode == 0, check.stdout + check.stderr
        assert after == before
        assert row["status"] == "abandoned"
    else:
        # Rolled forward: every layer holds the killed run's batch.
        assert check.returncode == 1 and "repair with: python -m flows.user_metrics" in check.stdout
        assert file_run(zone_file(lake, "raw", RUN_DATE)) == killed
        assert file_run(zone_file(lake, "shareable", RUN_DATE)) == killed
        assert after.runs("persons_anonymized") == after.runs("persons_shareable") == {killed}
        assert len(after.tables["persons_anonymized"]) == NEW_RECORDS
        assert (row["status"], row["failed_stage"]) == ("failed", "publish")
        # Its reports never reached the UI: the latest versions are those from before it.
        assert latest_artifacts(REPORT_KEYS) == {k: restored.published[k] for k in REPORT_KEYS}

    # The next run takes over the date cleanly (in-process), reports included.
    new = user_metrics_pipeline(
        api_url=api.base_url, records=NEW_RECORDS, page_size=100, run_date=RUN_DATE
    )
    final = stored_date(lake, db, RUN_DATE)
    new_id = new["flow_run_id"]
    assert final.runs("persons_anonymized") == final.runs("persons_shareable") == {new_id}
    assert file_run(zone_file(lake, "raw", RUN_DATE)) == new["flow_run_id"]
    assert not temp_files(lake)
    latest = latest_artifacts(REPORT_KEYS)
    assert {run for _, run in latest.values()} == {new["flow_run_id"]}
