"""One commit point: a run that fails after its load leaves the date as it was, or says so.

Each case loads the date cleanly first, then runs the CLI in a subprocess with one fault after
the load: a raw e-mail in a kept field (past a gap in the vocabulary check, so only the leak scan
can stop it), an exception in the
privacy or report step, the DuckDB lock held past its timeout, an exception while creating the
artifacts (after the commit). Then, read back from disk and through the Prefect client:

- before the commit, the date's lake files (bytes), DuckDB rows (every column), extract and the
  latest artifact of every key are exactly what they were;
- the faulty value is nowhere: lake, DuckDB, the Prefect database, the run's logs, artifacts and
  terminal output;
- the `run-failure` artifact and the run's pipeline_runs row say what the date holds, as the
  test reads it back;
- the terminal shows one `error:` line and no traceback;
- the next clean run of the date succeeds and publishes every report.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.user_metrics import user_metrics_pipeline
from local_api.server import LocalApiServer
from tests.helpers import served_records
from tests.reliability.conftest import (
    Restored,
    error_lines,
    run_cli,
    start_runner,
    wait_for_marker,
)
from tests.reliability.crash_runner import PLANTED
from tests.reliability.drills import (
    db_lock_held,
    file_run,
    latest_artifacts,
    latest_run_id,
    places_holding,
    run_artifacts,
    run_outputs,
    run_row,
    stored_date,
    zone_file,
)

RUN_DATE = dt.date(2026, 10, 5)
OLD_RECORDS = 300
NEW_RECORDS = 500
SEED = 5
BASELINE = {"run_date": RUN_DATE, "records": OLD_RECORDS, "page_size": 100, "seed": SEED}
REPORT_KEYS = ("germany-gmail-share", "top-gmail-countries", "gmail-users-over-60")
PLANTED_PARTS = (PLANTED, "planted.person@example.org", "+14155550123")


@dataclasses.dataclass(frozen=True)
class Case:
    """One fault after the load, where it stops the run, and whether the batch got committed."""

    name: str
    hook: str  # the runner's hook (crash_runner.py), or "" for a plain CLI run
    failed_step: str
    error: str  # the start of the error line after "error: "
    faults: tuple[str, ...] = ()  # local API drifts
    committed: bool = False


CASES = [
    # The vocabulary refuses such a batch before masking; were it to let one through, the leak
    # scan, which trusts no value the batch carries, stops it before the commit.
    Case(
        "raw e-mail in a kept field",
        "skip-vocabulary",
        "verify",
        "LeakError: leak scan",
        ("email-in-country",),
    ),
    Case("exception in the privacy step", "raise-privacy", "privacy", "LibraryError: RuntimeError"),
    Case("exception in the report step", "raise-reports", "reports", "LibraryError: RuntimeError"),
    Case("DuckDB lock held past its timeout", "lock-load", "load", "DatabaseBusyError"),
    Case(
        "exception while creating artifacts",
        "raise-publish",
        "publish",
        "LibraryError: RuntimeError",
        committed=True,
    ),
]


def run_faulty(
    case: Case, api_url: str, env: dict[str, str], tmp_path: Path, db: Path
) -> subprocess.CompletedProcess:
    """The CLI for the date, with the case's hook; the lock case holds the lock at the load."""
    cli = [
        "--api-url",
        api_url,
        "--records",
        str(NEW_RECORDS),
        "--page-size",
        "100",
        "--seed",
        str(SEED + 1),
        "--run-date",
        RUN_DATE.isoformat(),
    ]
    if not case.hook:
        return run_cli(cli, env)
    marker, release = tmp_path / "marker", tmp_path / "release"
    env = {**env, "DUCKDB_LOCK_TIMEOUT_SECONDS": "3"}
    proc = start_runner(case.hook, marker, env, cli, release)
    if case.hook == "lock-load":
        # Another run takes the DuckDB file as this one is about to stage its batch, and keeps
        # it until this one has given up and reported.
        wait_for_marker(proc, marker)
        with db_lock_held(db):
            release.write_text("go")
            out, err = proc.communicate(timeout=240)
    else:
        out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def held_lines(failure: str) -> dict[str, str]:
    """The `What the date holds now` lines of a run-failure artifact, by label."""
    lines = {}
    for line in failure.splitlines():
        label, sep, value = line.removeprefix("- ").partition(": ")
        if sep and line.startswith("- "):
            lines[label] = value
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_fault_after_the_load(
    case: Case,
    start_api: Callable[..., LocalApiServer],
    reliability_env,
    subprocess_env: dict[str, str],
    restored: Restored,
    tmp_path: Path,
) -> None:
    lake, db, before = restored.lake, restored.db, restored.before
    api = start_api(drift=case.faults)
    done = run_faulty(case, api.base_url, subprocess_env, tmp_path, db)
    planted = list(PLANTED_PARTS)
    if case.faults:
        served = served_records(api)
        planted = [r["address"]["country"] for r in served if "@" in r["address"]["country"]]
        assert planted, "the hostile server planted no e-mail address"
    run_id = latest_run_id(db)
    assert run_id != restored.baseline.flow_run_id

    # One error line, no traceback, naming the cause.
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = error_lines(done.stderr)
    assert line.startswith(f"error: {case.error}"), line
    assert "Traceback" not in done.stderr

    after = stored_date(lake, db, RUN_DATE)
    if not case.committed:
        assert after == before, "the date changed"
        assert latest_artifacts() == restored.published, "an artifact of the failed run is visible"
    else:
        assert after.runs("persons_anonymized") == after.runs("persons_shareable") == {run_id}
        assert file_run(zone_file(lake, "raw", RUN_DATE)) == run_id

    # The failure report says what the date holds, as read back here.
    failure = run_artifacts(run_id)["run-failure"]
    held = held_lines(failure)
    lake_run = file_run(zone_file(lake, "raw", RUN_DATE))
    assert held["Raw lake file"].startswith(f"run {lake_run}"), failure
    assert held["Shareable extract file"].startswith(
        f"run {file_run(zone_file(lake, 'shareable', RUN_DATE))}"
    )
    rows = len(after.tables["persons_anonymized"])
    (db_run,) = after.runs("persons_anonymized")
    row = run_row(db, run_id)
    # Every case names the step it stopped in, the lock's too (its row is written later).
    assert f"- **Step:** {case.failed_step}\n" in failure, failure
    if case.hook == "lock-load":
        assert held["DuckDB rows (persons_anonymized)"].startswith("not read"), failure
        # The test still held the lock when the run reported: its row is written by the check.
        assert run_cli(["--check"], subprocess_env).returncode == 0
        assert run_row(db, run_id)["status"] == "abandoned"
    else:
        shown = held["DuckDB rows (persons_anonymized)"]
        assert shown.startswith(f"run {db_run}") and f"({rows:,} rows)" in shown, failure
        assert (row["status"], row["failed_stage"]) == ("failed", case.failed_step), row
        assert row["kept_lake_run"].startswith(f"run {lake_run}")
        assert row["kept_db_run"].startswith(f"run {db_run} ({rows:,} rows)")
        assert row["error"] == line.removeprefix("error: ")
    if case.committed:
        assert "This run's batch was committed" in failure
        assert held["Artifacts this run published"] == "validation-results"
    else:
        assert "Nothing of this run was committed" in failure

    # The faulty value is nowhere.
    outputs = run_outputs(run_id, done.stdout, done.stderr)
    assert not places_holding(planted, lake, db, outputs)

    # A clean rerun of the date succeeds and publishes every report.
    clean = start_api()
    new = user_metrics_pipeline(
        api_url=clean.base_url, records=NEW_RECORDS, page_size=100, run_date=RUN_DATE
    )
    latest = latest_artifacts(REPORT_KEYS)
    assert {run for _, run in latest.values()} == {new["flow_run_id"]}
    final = stored_date(lake, db, RUN_DATE)
    assert final.runs("persons_anonymized") == {new["flow_run_id"]}
