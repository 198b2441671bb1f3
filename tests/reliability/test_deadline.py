"""A run's overall deadline: a CLI run that outlasts it stops, says in one line which limit it
hit, records its failure like any other, and leaves nothing staged."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client

from tests.reliability.conftest import (
    Site,
    db_query,
    error_lines,
    lake_file,
    run_cli,
    temp_files,
    wait_for,
)
from tests.reliability.drills import run_artifacts, run_row
from tests.reliability.test_bad_input import assert_refused, run_main

RUN_DATE = dt.date(2026, 4, 12)
# Long enough for the run to get to its fetch on a busy machine, short for a test.
DEADLINE = 8


@pytest.mark.slow
def test_a_cli_run_past_its_deadline_stops_and_names_the_limit(
    start_api, subprocess_env: dict[str, str], paths: tuple[Path, Path]
) -> None:
    lake, db = paths
    # Every body a byte per 0.3 s and a response deadline far past the run's: only the run's
    # own deadline can stop the fetch, whose threads must stop with the run (else the CLI
    # would wait out the response deadline and outlast run_cli's timeout).
    api = start_api(slow_body_rate=1.0, slow_body_seconds=0.3)
    env = {**subprocess_env, "FETCH_RESPONSE_DEADLINE_SECONDS": "600"}
    args = ["--api-url", api.base_url, "--records", "10", "--run-date", str(RUN_DATE)]
    done = run_cli([*args, "--deadline-seconds", str(DEADLINE)], env, timeout=180)

    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = error_lines(done.stderr)
    assert line.startswith(
        f"error: the run exceeded its {DEADLINE} s deadline "
        "(FLOW_TIMEOUT_SECONDS / --deadline-seconds): raise it"
    ), line
    assert "Traceback" not in done.stderr
    # The fetch was under way, and the client hung up with the run.
    assert api.stats()["faults"].get("slow-body", 0) >= 1
    wait_for(lambda: api.stats()["in_flight"] == 0, 10, "the slow responses to end")

    # Recorded like any failure: the pipeline_runs row, the run-failure artifact, and Prefect
    # marks the run TimedOut.
    ((run_id,),) = db_query(db, "select flow_run_id from pipeline_runs")
    row = run_row(db, run_id)
    assert row is not None
    assert (row["status"], row["failed_stage"]) == ("failed", "fetch"), row
    assert row["error"] == (
        f"RunDeadlineError: the run exceeded its {DEADLINE} s deadline (FLOW_TIMEOUT_SECONDS; "
        "a CLI run: --deadline-seconds)"
    )
    assert f"exceeded its {DEADLINE} s deadline" in run_artifacts(run_id)["run-failure"]
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(run_id)).state
    assert state is not None and state.name == "TimedOut", state
    # Nothing staged, nothing committed.
    assert temp_files(lake) == [] and not lake_file(lake, RUN_DATE).exists()
    assert db_query(db, "select count(*) from persons_anonymized") == [(0,)]


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "soon"])
def test_a_bad_deadline_is_refused_as_input(value: str, api, site: Site, capsys) -> None:
    code, err = run_main(["--api-url", api.base_url, "--deadline-seconds", value], capsys)
    assert_refused(code, err, ["--deadline-seconds", value], api, site)
