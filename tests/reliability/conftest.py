"""Reliability drills: shared fixtures, snapshots of a date's stored state, the fault table.

The fault matrix records one row per case with `record_fault_row`; matrix_table.py (a plugin the
root conftest loads, so that it also runs in the xdist controller, which collects no test and so
loads no conftest of this folder) gathers the rows and prints the table at the end of the session.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest

from tests.conftest import TEST_KEY
from tests.reliability.drills import StoredDate, latest_artifacts, stored_date
from tests.reliability.matrix_table import MatrixRow, record

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# Chart images need a headless browser (~2 s a run) and prove nothing about reliability.
NO_BROWSER = "/nonexistent/no-charts-in-reliability-tests"


@pytest.fixture
def record_fault_row(request: pytest.FixtureRequest) -> Callable[[MatrixRow], None]:
    """How a fault-matrix case adds its row to the table printed at the end of the session."""
    return lambda row: record(request.node, row)


@pytest.fixture
def reliability_env(
    pipeline_env: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., None]]:
    """pipeline_env plus a setter for more env values that also clears the settings caches."""
    from tasks.common.secrets import hash_key
    from tasks.common.settings import get_settings
    from tasks.ingest.fetch import close_clients

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        hash_key.cache_clear()

    monkeypatch.setenv("BROWSER_PATH", NO_BROWSER)
    set_env()
    yield set_env
    # Pooled HTTP clients would keep connections to servers that are gone.
    close_clients()


@pytest.fixture
def paths(pipeline_env: Path) -> tuple[Path, Path]:
    """(lake dir, DuckDB file) as pipeline_env sets them."""
    return pipeline_env / "lake", pipeline_env / "db" / "faker.duckdb"


@dataclasses.dataclass(frozen=True)
class Site:
    """Where a drill's in-process runs write, and how it sets more of their environment."""

    lake: Path
    db: Path
    set_env: Callable[..., None]  # set env values and clear the settings caches


@pytest.fixture
def site(
    reliability_env: Callable[..., None], paths: tuple[Path, Path], prefect_storage: Path
) -> Site:
    """What a drill that runs the flow in this process needs: the pipeline's env without a
    browser, the session's Prefect harness, and the lake and DuckDB file the run writes."""
    lake, db = paths
    return Site(lake, db, reliability_env)


def lake_file(lake: Path, run_date: dt.date) -> Path:
    """The run date's raw lake file."""
    return lake / "raw" / f"{run_date:%Y}" / f"{run_date:%m}" / f"{run_date:%d}" / "persons.parquet"


def temp_files(lake: Path) -> list[Path]:
    """Dot-temp files the staging writers leave behind if a process dies before its commit."""
    return sorted(p for p in lake.rglob(".*.tmp")) if lake.exists() else []


def db_query(db: Path, sql: str, params: list | tuple = ()) -> list[tuple]:
    """Run a read-only query on the DuckDB file (no pipeline process may hold it)."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


@dataclasses.dataclass(frozen=True)
class DateState:
    """What is stored for one run date: lake file bytes and its DuckDB rows."""

    lake_bytes: bytes | None
    rows: tuple[tuple[str, str], ...]  # sorted (person_key, flow_run_id)
    reports: tuple[tuple, ...]

    @property
    def flow_run_ids(self) -> set[str]:
        """Distinct flow runs whose rows are stored for the date."""
        return {run for _, run in self.rows}


def snapshot(lake: Path, db: Path, run_date: dt.date) -> DateState:
    """The stored state of run_date, to compare before and after a faulted run."""
    path = lake_file(lake, run_date)
    rows = db_query(
        db,
        "select person_key, flow_run_id from persons_anonymized where run_date = ?"
        " order by person_key, flow_run_id",
        [run_date],
    )
    reports = db_query(
        db,
        "select * from report_gmail_users_over_60 where run_date = ? order by all",
        [run_date],
    )
    return DateState(
        lake_bytes=path.read_bytes() if path.exists() else None,
        rows=tuple(rows),
        reports=tuple(reports),
    )


def run_status(db: Path, flow_run_id: str) -> tuple[str, str | None] | None:
    """(status, error) of a flow run in pipeline_runs, or None if it left no row."""
    found = db_query(
        db, "select status, error from pipeline_runs where flow_run_id = ?", [flow_run_id]
    )
    return found[0] if found else None


@pytest.fixture
def prefect_api_url(prefect_storage) -> str:
    """The session test harness's API URL, so subprocesses skip starting an ephemeral server."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the Prefect test harness did not set PREFECT_API_URL"
    return url


@pytest.fixture
def subprocess_env(pipeline_env: Path, prefect_api_url: str) -> dict[str, str]:
    """Environment for a pipeline subprocess: the test's lake, database, key and Prefect API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    prefect_home = pipeline_env / "prefect-home"
    prefect_home.mkdir(exist_ok=True)
    env.update(
        DATA_LAKE_DIR=str(pipeline_env / "lake"),
        DUCKDB_PATH=str(pipeline_env / "db" / "faker.duckdb"),
        PII_HASH_KEY=TEST_KEY,
        PREFECT_HOME=str(prefect_home),
        PREFECT_API_URL=prefect_api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        BROWSER_PATH=NO_BROWSER,
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess:
    """`python -m flows.cli ARGS` in a real subprocess."""
    return subprocess.run(
        [PYTHON, "-m", "flows.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    """Poll a condition until it holds; fail naming what we waited for."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def error_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines that are not Prefect's own log lines."""
    return [line for line in stderr.splitlines() if line.strip() and not _is_log_line(line)]


def _is_log_line(line: str) -> bool:
    # Prefect's console handler prints "HH:MM:SS.mmm | LEVEL | logger - message"; its
    # "Starting temporary server" message goes on with a second line of its own.
    return (" | " in line[:40] and line[:2].isdigit()) or line.startswith(
        "See https://www.prefect.io/docs"
    )


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A folder holding `lake/` and `db/` after one clean run, and that run's id."""

    root: Path
    flow_run_id: str
    run_date: dt.date
    records: int

    def restore(self, lake: Path, db: Path) -> None:
        """Copy the clean lake and database to where the test's pipeline reads them."""
        shutil.copytree(self.root / "lake", lake)
        shutil.copytree(self.root / "db", db.parent)


@pytest.fixture(scope="module")
def baseline(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, prefect_storage
) -> Baseline:
    """One clean run of the module's BASELINE (run_date, records, page_size, seed), copied in
    per case: loading it per case doubled the time of a drill module."""
    from flows.user_metrics import user_metrics_pipeline
    from local_api.server import LocalApiServer
    from tasks.common.secrets import hash_key
    from tasks.common.settings import get_settings
    from tasks.ingest.fetch import close_clients

    params = request.module.BASELINE
    root = tmp_path_factory.mktemp("baseline")
    with pytest.MonkeyPatch.context() as mp, LocalApiServer(port=0) as clean:
        mp.setenv("DATA_LAKE_DIR", str(root / "lake"))
        mp.setenv("DUCKDB_PATH", str(root / "db" / "faker.duckdb"))
        mp.setenv("PII_HASH_KEY", TEST_KEY)
        mp.setenv("BROWSER_PATH", NO_BROWSER)
        get_settings.cache_clear()
        hash_key.cache_clear()
        try:
            summary = user_metrics_pipeline(api_url=clean.base_url, **params)
        finally:
            close_clients()
            get_settings.cache_clear()
            hash_key.cache_clear()
    return Baseline(root, summary["flow_run_id"], params["run_date"], params["records"])


@dataclasses.dataclass(frozen=True)
class Restored:
    """The module's baseline copied in: where, what the date holds, what the UI shows."""

    lake: Path
    db: Path
    baseline: Baseline
    before: StoredDate  # the date's lake files and DuckDB rows
    published: dict[str, tuple[str, str]]  # the latest artifact of every key


@pytest.fixture
def restored(baseline: Baseline, paths: tuple[Path, Path]) -> Restored:
    """The clean baseline in the test's lake and database, and what it holds before the drill."""
    lake, db = paths
    baseline.restore(lake, db)
    before = stored_date(lake, db, baseline.run_date)
    return Restored(lake, db, baseline, before, latest_artifacts())


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`python -m flows.cli ARGS` started in a real subprocess, output piped."""
    return subprocess.Popen(
        [PYTHON, "-m", "flows.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_runner(
    hook: str, marker: Path, env: dict[str, str], cli_args: list[str], release: Path | None = None
) -> subprocess.Popen:
    """The pipeline CLI in a subprocess with a drill hook `hook` (crash_runner.py)."""
    head = [hook, str(marker)] + ([str(release)] if release else [])
    return subprocess.Popen(
        [PYTHON, str(ROOT / "tests" / "reliability" / "crash_runner.py"), *head, "--", *cli_args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_marker(proc: subprocess.Popen, marker: Path, timeout: float = 180) -> None:
    """Wait until the subprocess reached its hook; fail with its output if it exited first."""
    wait_for(lambda: marker.exists() or proc.poll() is not None, timeout, f"marker {marker.name}")
    if not marker.exists():
        out, err = proc.communicate()
        raise AssertionError(f"runner exited {proc.returncode} before its hook:\n{out}\n{err}")


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL: no handler, no finally block, no atexit runs."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
