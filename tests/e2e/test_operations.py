"""Operating it the Prefect way, against the session's real server, pool and worker: alerts when a
run fails or the daily is late, retries in the run's logs, one request budget shared by every
process, backfills from a deployment, a server with an auth string."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import httpx
import pytest

from local_api.faults import FaultConfig
from local_api.server import LocalApiServer
from tasks.common.errors import EMAIL_PATTERN, PHONE_PATTERN
from tests.e2e.conftest import LATE_WITHIN_SECONDS, REQUESTS_PER_MINUTE, Service, trigger

pytestmark = pytest.mark.e2e


@pytest.fixture
def serve_api() -> Iterator[Callable[..., LocalApiServer]]:
    """Start local APIs (with faults) on free loopback ports for the worker's runs to fetch."""
    servers: list[LocalApiServer] = []

    def start(**faults: object) -> LocalApiServer:
        server = LocalApiServer(port=0, faults=FaultConfig(**faults)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def flow_run(service: Service, flow_run_id: str):
    """The flow run as the server has it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import temporary_settings

    with temporary_settings(service.settings()), get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def test_the_server_asks_for_credentials(service: Service) -> None:
    assert httpx.get(f"{service.server_url}/flows/count").status_code in (401, 403, 405)
    denied = httpx.post(f"{service.server_url}/flows/count")
    assert denied.status_code == 401, denied.text


def test_a_failed_run_alerts_once_with_its_cause_and_is_not_retried(service: Service) -> None:
    closed = f"http://127.0.0.1:{_closed_port()}/api/v2"
    failed = trigger(service, f'api_url="{closed}"', "records=100")
    assert failed.returncode != 0, failed.output
    alert = service.webhook.wait_for(lambda m: failed.flow_run_id in m.get("body", ""), 120)
    body, subject = alert["body"], alert["subject"]
    lines = dict(line.split(": ", 1) for line in body.splitlines())
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert lines["Deployment"] == "user-metrics-pipeline/daily"
    assert lines["Flow run"].startswith(f"run-date-{today} ({failed.flow_run_id})")
    assert lines["State"] == "Failed" and "is Failed" in subject
    assert lines["Run date"] == f"{today} (today, UTC)"
    assert "InputError: api_url" in lines["Failure"] and "unreachable" in lines["Failure"]
    assert lines["Open"] == (
        f"{service.server_url.removesuffix('/api')}/runs/flow-run/{failed.flow_run_id}"
    )
    assert alert["text"] == f"{subject}\n{body}"  # what Slack shows
    text = body + subject
    assert not EMAIL_PATTERN.python.search(text) and not PHONE_PATTERN.python.search(text)
    # Bad input is deterministic: the run was not tried again.
    run = flow_run(service, failed.flow_run_id)
    assert run.state.is_failed() and run.run_count == 1


def test_a_transient_failure_is_retried_at_its_page_range_not_the_whole_run(
    service: Service, serve_api
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import temporary_settings

    down = serve_api(down=True)  # reachable, but every request fails: the API is down for now
    failed = trigger(service, f'api_url="{down.base_url}"', "records=100")
    assert failed.returncode != 0, failed.output
    run = flow_run(service, failed.flow_run_id)
    assert run.state.is_failed() and run.run_count == 1, (run.state, run.run_count)
    assert run.empirical_policy.retries in (0, None)
    with temporary_settings(service.settings()), get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
    fetches = [t for t in tasks if t.name.startswith("fetch and mask")]
    # One page, one range: fetched twice (FETCH_RANGE_RETRIES=1 in the session), 2 attempts each.
    assert [(t.run_count, t.state_type.value) for t in fetches] == [(2, "FAILED")], fetches
    assert down.stats()["total"] == 4, down.stats()
    alert = service.webhook.wait_for(lambda m: failed.flow_run_id in m.get("body", ""), 120)
    assert "FetchError: page 0 failed after 2 attempts; last cause: HTTP 503" in alert["body"]


def test_the_daily_deployment_late_alert(service: Service) -> None:
    # Applied with a window of LATE_WITHIN_SECONDS (26 hours in automations.yaml).
    late = service.webhook.wait_for(
        lambda m: "is late" in m.get("subject", ""), LATE_WITHIN_SECONDS + 120
    )
    assert late["subject"].startswith("user-metrics-pipeline/daily is late")


def test_fetch_retries_show_in_the_flow_runs_logs(service: Service, serve_api) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import temporary_settings

    limited = serve_api(fail_first=1, error_statuses=(429,))  # every page's first try: 429
    done = trigger(service, f'api_url="{limited.base_url}"', "records=300", "page_size=100")
    assert done.returncode == 0, done.output
    with temporary_settings(service.settings()), get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[done.flow_run_id]))
        )
    retries = [log.message for log in logs if "attempt 1/2: HTTP 429; retrying" in log.message]
    assert len(retries) == 3, [log.message for log in logs]


def test_two_runs_at_once_share_one_request_budget(
    service: Service, serve_api, tmp_path: Path
) -> None:
    api = serve_api(rate_limit=REQUESTS_PER_MINUTE, rate_window=60.0)
    env = {
        **service.client_env(),
        "DATA_LAKE_DIR": str(tmp_path / "lake"),
        "DUCKDB_PATH": str(tmp_path / "db" / "faker.duckdb"),
        "REQUESTS_PER_MINUTE": str(REQUESTS_PER_MINUTE),
    }
    cli = [sys.executable, "-m", "flows.cli", "--api-url", api.base_url]
    runs = [
        subprocess.Popen(
            [*cli, "--records", "1600", "--page-size", "100", "--run-date", day],
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for day in ("2026-11-01", "2026-11-02")
    ]
    outputs = [run.communicate(timeout=400)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert all("shared through concurrency limit 'faker-api-requests'" in o for o in outputs)
    stats = api.stats()
    assert stats["by_status"] == {"200": 32}, stats["by_status"]  # no request met a 429
    times = sorted(at for at, status in stats["answered"])
    busiest = max(sum(1 for t in times if start <= t < start + 60) for start in times)
    assert busiest <= REQUESTS_PER_MINUTE, busiest
    # 32 requests at 30 a minute take more than a minute, whoever sends them.
    assert times[-1] - times[0] >= 60


def test_a_range_backfill_runs_from_its_deployment(service: Service) -> None:
    options = f'{{"api_url": "{service.api_url}", "records": 200, "page_size": 100}}'
    done = trigger(
        service,
        "start_date=2026-10-20",
        "end_date=2026-10-21",
        f"options={options}",
        deployment="user-metrics-backfill/range",
    )
    assert done.returncode == 0, done.output
    with duckdb.connect(str(service.duckdb_path), read_only=True) as con:
        loaded = con.execute(
            "select run_date, count(*) from persons_anonymized"
            " where run_date between '2026-10-20' and '2026-10-21' group by 1 order by 1"
        ).fetchall()
    assert loaded == [(dt.date(2026, 10, 20), 200), (dt.date(2026, 10, 21), 200)]


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
