"""flows/leftovers.py: a dead run's Prefect flow run is marked Crashed, its temp folders removed,
and nothing alive, elsewhere or not ours is touched."""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from prefect.states import Completed, Pending, Running

from flows.leftovers import check_api, crash_dead_flow_runs, repair_leftovers
from flows.processes import free_port
from flows.user_metrics import user_metrics_backfill, user_metrics_pipeline
from tasks.common.tempdirs import make_temp_dir
from tasks.reporting.charts import prestart
from tasks.storage.database import open_db, utc_now
from tasks.storage.migrations import migrate
from tasks.storage.recovery import remove_dead_temp_dirs
from tasks.storage.runs import start_run
from tests.helpers import dead_pid

DAY = dt.date(2026, 8, 21)
# How the checks open the DuckDB file here: no Prefect concurrency limit, a short wait.
OPEN: dict[str, Any] = {"timeout": 10.0, "limit": None}


@flow(name="someone-elses-flow")
def someone_elses_flow() -> None:
    """A flow that is not ours: its flow runs are never touched."""


@task
def subflow_call() -> None:
    """Stands for the task through which a backfill's subflow hangs under it."""


@pytest.fixture
def db(pipeline_env: Path) -> Path:
    """The test's migrated DuckDB file (pipeline_env's DUCKDB_PATH)."""
    path = pipeline_env / "db" / "faker.duckdb"
    with open_db(path) as con:
        migrate(con)
    return path


def record(db: Path, flow_run_id: UUID, host: str, pid: int, ago: float = 0) -> None:
    """A pipeline_runs row: flow run `flow_run_id` ran in `pid` on `host`, recorded `ago` s ago."""
    with open_db(db) as con:
        start_run(con, str(flow_run_id), DAY, 10)
        con.execute(
            "update pipeline_runs set host = ?, pid = ?, started_at = ? where flow_run_id = ?",
            [host, pid, utc_now() - dt.timedelta(seconds=ago), str(flow_run_id)],
        )


def crashed_ids(findings: list) -> list[str]:
    """The flow run ids the findings say were marked Crashed."""
    return [
        m[1] for f in findings if (m := re.search(r"flow run (\S+) .*marked Crashed", f.line()))
    ]


def state_of(flow_run_id: UUID) -> tuple[StateType, str | None]:
    """(state type, message) of a flow run, as the Prefect API has it now."""
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert state is not None
    return state.type, state.message


def test_only_flow_runs_of_gone_processes_are_crashed(db: Path, prefect_storage) -> None:
    here, gone = socket.gethostname(), dead_pid()
    with get_client(sync_client=True) as client:

        def pipeline_run(pending: bool = False) -> UUID:
            state = Pending() if pending else Running()
            return client.create_flow_run(user_metrics_pipeline, f"run-date-{DAY}", state=state).id

        pending = pipeline_run(pending=True)
        dead, alive, elsewhere, unrecorded, retried, doing_the_check = (
            pipeline_run() for _ in range(6)
        )
        not_ours = client.create_flow_run(someone_elses_flow, state=Running()).id

        def backfill_with_child(pid: int) -> UUID:
            parent = client.create_flow_run(user_metrics_backfill, state=Running()).id
            call = client.create_task_run(subflow_call, parent, dynamic_key=str(pid))
            child = client.create_flow_run(
                user_metrics_pipeline, parent_task_run_id=call.id, state=Completed()
            ).id
            record(db, child, here, pid)
            return parent

        dead_backfill, live_backfill = backfill_with_child(gone), backfill_with_child(os.getpid())
    for run_id in (dead, pending, not_ours, doing_the_check):
        record(db, run_id, here, gone)
    record(db, alive, here, os.getpid())
    record(db, elsewhere, "another-host", gone)  # a worker's run elsewhere: not ours to judge
    # A new attempt of this flow run entered Running after the dead process recorded itself.
    record(db, retried, here, gone, ago=3600)

    findings = crash_dead_flow_runs("the test", db, current=str(doing_the_check), **OPEN)

    crashed = {dead, pending, dead_backfill}
    assert sorted(crashed_ids(findings)) == sorted(map(str, crashed))
    assert len(findings) == len(crashed) and all(f.repaired for f in findings)
    for run_id in crashed:
        kind, message = state_of(run_id)
        assert kind == StateType.CRASHED
        assert message == "the process running this flow run is gone (found by the test)"
    assert state_of(pending)[0] == StateType.CRASHED
    for run_id in (alive, elsewhere, unrecorded, retried, not_ours, live_backfill):
        assert state_of(run_id)[0] == StateType.RUNNING, run_id
    assert state_of(doing_the_check)[0] == StateType.RUNNING
    # The check itself is the one flow run it never judges; a later check does.
    later = crash_dead_flow_runs("a later check", db, **OPEN)
    assert crashed_ids(later) == [str(doing_the_check)]
    assert crash_dead_flow_runs("a third check", db, **OPEN) == []


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A system temp dir of the test's own, so no other test's folders are in play."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root


def test_temp_folders_of_dead_processes_are_removed_and_no_others(temp_root: Path) -> None:
    gone = dead_pid()
    dead = temp_root / f"faker-charts-{gone}-abc_12"
    (dead / "profile" / "Default").mkdir(parents=True)
    (dead / "index.html").write_text("<html></html>")
    live = make_temp_dir("charts")  # this process's
    assert live.parent == temp_root and live.name.startswith(f"faker-charts-{os.getpid()}-")
    target = temp_root / "elsewhere"
    target.mkdir()
    kept = [
        live,
        temp_root / "tmpk2j4_x1",  # a library's, without our prefix
        temp_root / f"faker-reports-{gone}-abc",  # a kind we never make
        temp_root / f"faker-charts-{gone}",  # no random part: not made by make_temp_dir
        temp_root / f"xfaker-charts-{gone}-abc",
    ]
    for path in kept[1:]:
        path.mkdir()
    link = temp_root / f"faker-charts-{gone}-link"
    link.symlink_to(target)
    plain_file = temp_root / f"faker-charts-{gone}-file"
    plain_file.write_text("")

    findings = remove_dead_temp_dirs()

    assert [f.line() for f in findings] == [
        f"removed {dead}, left by process {gone}, which is gone (repaired)"
    ]
    assert not dead.exists()
    assert all(path.is_dir() for path in kept)
    assert link.is_symlink() and target.is_dir() and plain_file.is_file()
    assert remove_dead_temp_dirs() == []


def test_the_chart_browser_keeps_its_folders_in_one_named_for_its_process(
    chromium: str, temp_root: Path
) -> None:
    with prestart(browser=chromium) as browser:
        assert browser.wait_ready(120)
        (folder,) = temp_root.glob("faker-charts-*")
        assert folder.name.startswith(f"faker-charts-{os.getpid()}-")
        assert [p.name[:3] for p in folder.iterdir() if p.is_dir()] == ["tmp"]  # the profile
        assert (folder / "index.html").is_file()
        assert remove_dead_temp_dirs() == [] and folder.exists()  # its owner is alive
    assert list(temp_root.iterdir()) == []


def test_without_a_prefect_api_the_check_says_so_and_goes_on(
    db: Path, temp_root: Path, prefect_storage
) -> None:
    gone = dead_pid()
    (temp_root / f"faker-charts-{gone}-abc").mkdir()
    closed = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings({PREFECT_API_URL: closed}), check_api() as unreachable:
        assert unreachable == f"Prefect flow runs not checked: no Prefect API answers at {closed}"
        findings, notes = repair_leftovers("the test", db, unreachable=unreachable, **OPEN)
    assert notes == [unreachable]
    assert [f.repaired for f in findings] == [True]  # the temp folder, all the same
    # An API that fails mid-check (here: never there) is one note too, never an exception.
    with temporary_settings({PREFECT_API_URL: closed, PREFECT_CLIENT_MAX_RETRIES: 0}):
        assert repair_leftovers("the test", db, **OPEN) == (
            [],
            ["Prefect flow runs not checked: ConnectError from the Prefect API"],
        )


def test_the_check_never_starts_a_prefect_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_storage
) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))  # no local server recorded
    with temporary_settings(restore_defaults={PREFECT_API_URL}), check_api() as unreachable:
        assert unreachable == (
            "Prefect flow runs not checked: no Prefect API is set or running "
            "(set PREFECT_API_URL, or start the local server: make serve)"
        )
