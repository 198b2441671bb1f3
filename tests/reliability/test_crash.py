"""Crash windows: SIGKILL a real pipeline process in each window of its commit.

Before the DuckDB commit, a killed run must leave the date exactly as it was (the staged files
are leftovers, never visible). After it, the check (`--check`, or the next run's own) must roll
the staged files forward, so the date holds one run's batch in every layer, and say the run's
artifacts need a rerun. Either way the next run takes the date over cleanly.

Outside the lake and DuckDB, a killed run leaves its Prefect flow run `Running` and its chart
browser's temp folder: the check (either of them) marks the flow run Crashed and removes the
folder, and nothing else.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from flows.user_metrics import user_metrics_pipeline
from local_api.server import LocalApiServer
from tests.reliability.conftest import (
    Restored,
    kill,
    run_cli,
    start_runner,
    temp_files,
    wait_for,
    wait_for_marker,
)
from tests.reliability.drills import (
    file_run,
    latest_artifacts,
    latest_run_id,
    run_logs,
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
@pytest.mark.parametrize("hook", WINDOWS)
def test_sigkill_in_each_crash_window(
    hook: str,
    api: LocalApiServer,
    reliability_env,
    subprocess_env: dict[str, str],
    restored: Restored,
    tmp_path: Path,
) -> None:
    lake, db, before = restored.lake, restored.db, restored.before
    assert before.runs("persons_anonymized") == {restored.baseline.flow_run_id}

    marker = tmp_path / f"{hook}.marker"
    cli = ["--api-url", api.base_url, "--records", str(NEW_RECORDS), "--page-size", "100"]
    proc = start_runner(hook, marker, subprocess_env, [*cli, "--run-date", str(RUN_DATE)])
    try:
        wait_for_marker(proc, marker)
        if hook == "lake-write":
            # The kill must land while a half-written staged file is on disk, or it proves little.
            assert Path(marker.read_text()).exists()
    finally:
        if proc.poll() is None:
            kill(proc)
    killed = latest_run_id(db)
    assert killed != restored.baseline.flow_run_id
    committed = WINDOWS[hook]

    if not committed:
        # Nothing of the killed run is visible, before any repair.
        assert stored_date(lake, db, RUN_DATE) == before
        assert latest_artifacts() == restored.published
    check = run_cli(["--check"], subprocess_env)
    print(f"{hook}: --check said:\n{check.stdout}")
    after = stored_date(lake, db, RUN_DATE)
    assert not temp_files(lake), f"staged files left after the check: {temp_files(lake)}"
    row = run_row(db, killed)
    if not committed:
        assert check.returncode == 0, check.stdout + check.stderr
        assert after == before
        assert row["status"] == "abandoned"
    else:
        # Rolled forward: every layer holds the killed run's batch.
        assert check.returncode == 1 and "repair with: python -m flows.cli" in check.stdout
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


@pytest.fixture
def temp() -> Iterator[Path]:
    """A temp dir of the test's own for its runs and checks: no other test sees their folders.

    Under /tmp, with a short name: Chromium fails to start with a profile path of more than about
    100 characters, and pytest's tmp_path leaves too few of them.
    """
    path = Path(tempfile.mkdtemp(prefix="crash-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def flow_run_state(flow_run_id: str) -> tuple[StateType, str | None]:
    """(state type, message) of a flow run, as the Prefect API has it now."""
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(flow_run_id)).state
    assert state is not None
    return state.type, state.message


@pytest.mark.slow
def test_a_killed_runs_flow_run_and_browser_folder_are_cleared(
    api: LocalApiServer,
    reliability_env,
    subprocess_env: dict[str, str],
    paths: tuple[Path, Path],
    chromium: str,
    temp: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, db = paths
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # the in-process run's check
    env = {**subprocess_env, "TMPDIR": str(temp), "BROWSER_PATH": chromium}
    cli = ["--api-url", api.base_url, "--records", "300", "--page-size", "100"]
    crashed_line = (
        f"{RUN_DATE}: flow run {{}} (run-date-{RUN_DATE}) was still Running: marked Crashed"
    )

    def killed_run(name: str) -> tuple[str, int, Path]:
        """A CLI run SIGKILLed in its DuckDB load, its browser up: (flow run id, pid, folder)."""
        marker = tmp_path / f"{name}.marker"
        proc = start_runner("duckdb-load", marker, env, [*cli, "--run-date", str(RUN_DATE)])
        try:
            wait_for_marker(proc, marker)
            # The browser starts early in the run: wait until Chromium writes its profile.
            wait_for(
                lambda: any(temp.glob(f"faker-charts-{proc.pid}-*/tmp*/Default")),
                120,
                "the chart browser's profile",
            )
        finally:
            if proc.poll() is None:
                kill(proc)
        (folder,) = temp.glob(f"faker-charts-{proc.pid}-*")
        run_id = latest_run_id(db)
        assert flow_run_state(run_id)[0] == StateType.RUNNING  # what a kill leaves
        return run_id, proc.pid, folder

    # The start of the next run of the date clears what the first killed run left.
    first, first_pid, first_folder = killed_run("first")
    new = user_metrics_pipeline(api_url=api.base_url, records=300, page_size=100, run_date=RUN_DATE)
    gone = "the process running this flow run is gone"
    by_start = f"{gone} (found by the start of run {new['flow_run_id']})"
    assert flow_run_state(first) == (StateType.CRASHED, by_start)
    logged = run_logs(new["flow_run_id"])
    assert f"check: {crashed_line.format(first)} (repaired)" in logged, logged
    assert not first_folder.exists()

    # `--check` clears what the second left, and only what dead processes left.
    second, _, second_folder = killed_run("second")
    dead = temp / f"faker-charts-{first_pid}-zz9"  # a folder of ours whose process is gone
    live = temp / f"faker-charts-{os.getpid()}-zz9"  # a live process's: this test's
    foreign = temp / f"tmp-{first_pid}-not-ours"
    for folder in (dead, live, foreign):
        folder.mkdir()
    check = run_cli(["--check"], env)
    print(f"--check said:\n{check.stdout}")
    assert check.returncode == 0, check.stdout + check.stderr
    lines = check.stdout.splitlines()
    assert f"{crashed_line.format(second)} (repaired)" in lines
    by_check = f"{gone} (found by `--check`)"
    assert flow_run_state(second) == (StateType.CRASHED, by_check)
    assert flow_run_state(first) == (StateType.CRASHED, by_start)  # crashed once, left alone
    assert not second_folder.exists() and not dead.exists()
    assert f"removed {dead}, left by process {first_pid}, which is gone (repaired)" in lines
    assert live.is_dir() and foreign.is_dir()
    assert sorted(temp.glob("faker-charts-*")) == [live]
    # Nothing is left for a second check.
    again = run_cli(["--check"], env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines() == ["check: 0 finding(s), 0 repaired, 0 left"]
