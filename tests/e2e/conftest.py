"""One real local Prefect service per test session, started and stopped as `make serve` does it."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.service import PROJECT_DIR, State, free_port, stop_group
from tests.conftest import TEST_KEY

E2E_RECORDS = 2000


@dataclasses.dataclass(frozen=True)
class Service:
    """What the session's service exposes to tests."""

    env: dict[str, str]
    home: Path
    server_url: str
    api_url: str
    duckdb_path: Path
    serve_output: str


@dataclasses.dataclass(frozen=True)
class Run:
    """One `prefect deployment run --watch` of the daily deployment."""

    flow_run_id: str
    returncode: int
    output: str


def run_service_cli(env: dict[str, str], *args: str, timeout: float = 400) -> str:
    """`python -m flows.service ARGS` as a user runs it; on failure, fail with its output."""
    done = subprocess.run(
        [sys.executable, "-m", "flows.service", *args],
        env=env,
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"flows.service {args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Server on a free loopback port, isolated PREFECT_HOME, local API, pool, deploy, worker."""
    home = tmp_path_factory.mktemp("prefect-home")
    data = tmp_path_factory.mktemp("e2e-data")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PII_HASH_KEY"))}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(free_port()),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PII_HASH_KEY=TEST_KEY,
        DATA_LAKE_DIR=str(data / "lake"),
        DUCKDB_PATH=str(data / "db" / "faker.duckdb"),
    )
    state = State(home)
    try:
        output = run_service_cli(env, "serve")
        urls = state.urls()
        yield Service(
            env=env,
            home=home,
            server_url=urls["server"],
            api_url=urls["api"],
            duckdb_path=data / "db" / "faker.duckdb",
            serve_output=output,
        )
    finally:
        # By process id, whatever happened above: `stop` first, then anything it left behind.
        pids = {name: state.pid(name) for name in ("worker", "api", "server")}
        subprocess.run(
            [sys.executable, "-m", "flows.service", "stop"], env=env, cwd=PROJECT_DIR, timeout=120
        )
        for pid in pids.values():
            if pid is not None:
                stop_group(pid, timeout=5)


@pytest.fixture(scope="session")
def daily_run(service: Service) -> Run:
    """Run the daily deployment once through the CLI, small and against the local API, and wait."""
    env = {**service.env, "PREFECT_API_URL": service.server_url}
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("prefect")),
            "deployment",
            "run",
            "user-metrics-pipeline/daily",
            "--watch",
            "--watch-timeout",
            "300",
            "--param",
            f"records={E2E_RECORDS}",
            "--param",
            f'api_url="{service.api_url}"',
        ],
        env=env,
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=360,
    )
    output = done.stdout + done.stderr
    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert match, f"no flow run id in the output:\n{output}"
    return Run(flow_run_id=match.group(1), returncode=done.returncode, output=output)
