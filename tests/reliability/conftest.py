"""Reliability drills: shared fixtures, snapshots of a date's stored state, the fault table.

The fault matrix appends one row per case to a session-wide list kept in `config.stash`; the
`pytest_terminal_summary` hook below prints it at the end of the session. A non-root conftest may
implement this hook: pytest registers every collected conftest as a plugin.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest

from tests.conftest import TEST_KEY

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


@dataclasses.dataclass(frozen=True)
class MatrixRow:
    """One line of the fault table printed at the end of the session."""

    fault: str
    outcome: str  # "completed", "failed", or "INVALID: ..." when neither contract held
    records_loaded: int
    seconds: float


FAULT_ROWS = pytest.StashKey[list[MatrixRow]]()


def fault_rows(config: pytest.Config) -> list[MatrixRow]:
    """The session's fault table (created on first use)."""
    if FAULT_ROWS not in config.stash:
        config.stash[FAULT_ROWS] = []
    return config.stash[FAULT_ROWS]


@pytest.fixture
def fault_table(request: pytest.FixtureRequest) -> list[MatrixRow]:
    """Where a fault-matrix case records its row."""
    return fault_rows(request.config)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Print the fault matrix: fault, outcome, records loaded, seconds."""
    rows = config.stash.get(FAULT_ROWS, [])
    if not rows:
        return
    width = max(len("fault"), *(len(r.fault) for r in rows))
    outcome_width = max(len("outcome"), *(len(r.outcome) for r in rows))
    terminalreporter.section("fault matrix")
    terminalreporter.write_line(
        f"{'fault':<{width}}  {'outcome':<{outcome_width}}  {'records loaded':>14}  {'seconds':>7}"
    )
    for row in rows:
        terminalreporter.write_line(
            f"{row.fault:<{width}}  {row.outcome:<{outcome_width}}  "
            f"{row.records_loaded:>14,}  {row.seconds:>7.2f}"
        )
    allowed = sum(r.outcome in ("completed", "failed") for r in rows)
    terminalreporter.write_line(f"{allowed} of {len(rows)} rows are an allowed outcome")


@pytest.fixture
def reliability_env(
    pipeline_env: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., None]]:
    """pipeline_env plus a setter for more env values that also clears the settings caches."""
    from tasks.fetch import close_clients
    from tasks.settings import get_settings
    from tasks.steps import hash_key

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        hash_key.cache_clear()

    # Chart images need a headless browser (~2 s a run) and prove nothing about reliability.
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/no-charts-in-reliability-tests")
    set_env()
    yield set_env
    # Pooled HTTP clients would keep connections to servers that are gone.
    close_clients()


@pytest.fixture
def paths(pipeline_env: Path) -> tuple[Path, Path]:
    """(lake dir, DuckDB file) as pipeline_env sets them."""
    return pipeline_env / "lake", pipeline_env / "db" / "faker.duckdb"


def lake_file(lake: Path, run_date: dt.date) -> Path:
    """The run date's raw lake file."""
    return lake / "raw" / f"{run_date:%Y}" / f"{run_date:%m}" / f"{run_date:%d}" / "persons.parquet"


def temp_files(lake: Path) -> list[Path]:
    """Dot-temp files the atomic writers leave behind if a process dies mid-write."""
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
        BROWSER_PATH="/nonexistent/no-charts-in-reliability-tests",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess:
    """`python -m flows.user_metrics ARGS` in a real subprocess."""
    return subprocess.run(
        [PYTHON, "-m", "flows.user_metrics", *args],
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
    # Prefect's console handler prints "HH:MM:SS.mmm | LEVEL | logger - message".
    return " | " in line[:40] and line[:2].isdigit()
