"""One real local Prefect service per test session, started and stopped as `make serve` does it.

It runs as a team would run it: an auth string on the server (every client must send it),
alerts to a webhook (a receiver started here), a shared request budget of 30 a minute, fast
retries, and a "daily is late" window of seconds instead of 26 hours.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from flows.processes import PROJECT_DIR, ServiceState, free_port, stop_group
from tests.conftest import TEST_KEY

E2E_RECORDS = 2000
# The service's FAKER_RECORDS: what a deployment run without `records` fetches.
SETTINGS_RECORDS = 300


AUTH = "e2e-admin:" + secrets.token_hex(8)
LATE_WITHIN_SECONDS = 15
REQUESTS_PER_MINUTE = 30


class Webhook:
    """An HTTP server on 127.0.0.1 that keeps every JSON body posted to it (the alerts)."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first alert that `match`es, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.received):
                if match(message):
                    return message
            time.sleep(0.5)
        raise AssertionError(f"no matching alert within {timeout:.0f}s; got {self.received}")


@dataclasses.dataclass(frozen=True)
class Service:
    """What the session's service exposes to tests."""

    env: dict[str, str]
    home: Path
    server_url: str
    api_url: str
    duckdb_path: Path
    serve_output: str
    webhook: Webhook

    def settings(self) -> dict[Any, Any]:
        """Prefect settings of a client of this server (for `temporary_settings`)."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

        return {PREFECT_API_URL: self.server_url, PREFECT_API_AUTH_STRING: AUTH}

    def client_env(self) -> dict[str, str]:
        """Environment of a process that talks to this server (the CLI, a flow run)."""
        return {**self.env, "PREFECT_API_URL": self.server_url, "PREFECT_API_AUTH_STRING": AUTH}


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


def _shorten_late_alert(service: Service) -> None:
    """The "daily is late" alert as applied, with a window of LATE_WITHIN_SECONDS (a day
    otherwise), so the session sees it fire; changed through Prefect's client, as a user would."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore
    from prefect.settings import temporary_settings

    with temporary_settings(service.settings()), get_client(sync_client=True) as client:
        late = [
            a for a in client.read_automations() if getattr(a.trigger, "posture", "") == "Proactive"
        ]
        assert len(late) == 1, late
        (automation,) = late
        trigger = automation.trigger.model_copy(
            update={"within": dt.timedelta(seconds=LATE_WITHIN_SECONDS)}
        )
        # What an update takes: the automation's own fields, without the server-side owner.
        fields = automation.model_dump(
            include=set(AutomationCore.model_fields), exclude={"owner_resource"}
        )
        client.update_automation(
            automation.id, AutomationCore.model_validate({**fields, "trigger": trigger})
        )


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Server on a free loopback port, isolated PREFECT_HOME, local API, pool, deploy, worker."""
    webhook = Webhook()
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
        FAKER_RECORDS=str(SETTINGS_RECORDS),
        DATA_LAKE_DIR=str(data / "lake"),
        DUCKDB_PATH=str(data / "db" / "faker.duckdb"),
        PREFECT_SERVER_API_AUTH_STRING=AUTH,
        ALERT_WEBHOOK_URL=webhook.url,
        REQUESTS_PER_MINUTE=str(REQUESTS_PER_MINUTE),
        FETCH_RANGE_RETRIES="1",
        FETCH_RANGE_RETRY_DELAY_SECONDS="1",
        RETRY_MAX_ATTEMPTS="2",
        RETRY_BACKOFF_BASE_SECONDS="0.1",
        RETRY_BACKOFF_MAX_SECONDS="0.2",
        RETRY_AFTER_MAX_SECONDS="1",
    )
    state = ServiceState(home)
    try:
        output = run_service_cli(env, "serve")
        urls = state.urls()
        service = Service(
            env=env,
            home=home,
            server_url=urls["server"],
            api_url=urls["api"],
            duckdb_path=data / "db" / "faker.duckdb",
            serve_output=output,
            webhook=webhook,
        )
        _shorten_late_alert(service)
        yield service
    finally:
        # By process id, whatever happened above: `stop` first, then anything it left behind.
        pids = {name: state.pid(name) for name in ("worker", "api", "server")}
        stopped = subprocess.run(
            [sys.executable, "-m", "flows.service", "stop"],
            env=env,
            cwd=PROJECT_DIR,
            timeout=120,
            capture_output=True,
            text=True,
        )
        for pid in pids.values():
            if pid is not None:
                stop_group(pid, timeout=5)
        webhook.server.shutdown()
        # `make stop` stopped everything `make serve` started, by the pids it recorded.
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert all(f"{name:<8} stopped" in stopped.stdout for name in pids), stopped.stdout


def trigger(service: Service, *params: str, deployment: str | None = None) -> Run:
    """`make trigger ARGS="--param ..."` (the daily deployment), or `prefect deployment run` of
    another deployment, with the service's credentials; wait for the run to end."""
    args = [f"--param={param}" for param in params]
    if deployment is None:
        cmd = [sys.executable, "-m", "flows.service", "trigger", *args]
    else:
        prefect = str(Path(sys.executable).with_name("prefect"))
        cmd = [prefect, "deployment", "run", deployment, "--watch", "--watch-timeout", "300", *args]
    env = service.client_env() if deployment else service.env
    done = subprocess.run(
        cmd, env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=420
    )
    output = done.stdout + done.stderr
    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert match, f"no flow run id in the output:\n{output}"
    return Run(flow_run_id=match.group(1), returncode=done.returncode, output=output)


@pytest.fixture(scope="session")
def daily_run(service: Service) -> Run:
    """Run the daily deployment once, as `make trigger` does, small and against the local API."""
    return trigger(service, f"records={E2E_RECORDS}", f'api_url="{service.api_url}"')
