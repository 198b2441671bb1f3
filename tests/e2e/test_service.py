"""End to end, as a user does it: `make serve`'s steps, then `prefect deployment run --watch`."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from flows.processes import PROJECT_DIR, ServiceState
from tasks.reporting.artifacts import run_artifact_keys
from tests.e2e.conftest import E2E_RECORDS, Run, Service, run_service_cli

pytestmark = pytest.mark.e2e


def _client(service: Service):
    from prefect.client.orchestration import get_client
    from prefect.settings import temporary_settings

    with temporary_settings(service.settings()):
        return get_client(sync_client=True)


def test_deployment_run_completes_and_publishes_the_reports(
    service: Service, daily_run: Run, chromium: str
):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    assert daily_run.returncode == 0, daily_run.output
    assert "finished successfully in 'Completed'" in daily_run.output
    with _client(service) as client:
        flow_run = client.read_flow_run(daily_run.flow_run_id)
        assert flow_run.state is not None and flow_run.state.is_completed()
        deployment = client.read_deployment(flow_run.deployment_id)
        assert deployment.name == "daily"
        assert flow_run.parameters["records"] == E2E_RECORDS
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(run_artifact_keys())))
        )
    by_key = {a.key: a for a in artifacts if str(a.flow_run_id) == daily_run.flow_run_id}
    assert set(by_key) == set(run_artifact_keys())
    report = by_key["user-metrics-report"]
    assert report.type == "markdown"
    assert "data:image/png;base64," in str(report.data)
    assert "Gmail users are aged 60 or over" in str(report.data) or "Gmail user is aged 60" in str(
        report.data
    )
    # The worker ran the flow with the service's settings: its DuckDB, not the project's.
    with duckdb.connect(str(service.duckdb_path), read_only=True) as con:
        rows = con.execute(
            "select count(*) from persons_anonymized where flow_run_id = ?",
            [daily_run.flow_run_id],
        ).fetchone()
    assert rows == (E2E_RECORDS,)


def test_deployments_are_those_of_prefect_yaml(service: Service):
    with _client(service) as client:
        daily = client.read_deployment_by_name("user-metrics-pipeline/daily")
        backfill = client.read_deployment_by_name("user-metrics-pipeline/backfill")
        pool = client.read_work_pool("faker-pool")
        queues = {q.name: q.priority for q in client.read_work_queues(work_pool_name="faker-pool")}
        duckdb_limit = client.read_global_concurrency_limit_by_name("faker-duckdb")
    # No pool limit: runs fetch side by side and take the DuckDB file in turn, through a global
    # limit of one slot; backfills queue behind the daily run.
    assert pool.type == "process" and pool.concurrency_limit is None
    assert duckdb_limit.limit == 1 and duckdb_limit.active
    assert daily.work_pool_name == backfill.work_pool_name == "faker-pool"
    assert (daily.work_queue_name, backfill.work_queue_name) == ("default", "backfill")
    assert queues["default"] < queues["backfill"], queues  # a lower number is served first
    assert daily.entrypoint == "flows/user_metrics.py:deployed_pipeline"
    assert daily.global_concurrency_limit is not None
    assert daily.global_concurrency_limit.limit == 1
    [schedule] = daily.schedules
    assert schedule.schedule.cron == "0 6 * * *" and schedule.schedule.timezone == "UTC"
    assert backfill.schedules == []
    # The pull step enters the folder `prefect deploy` ran in, recorded then: the checkout.
    [step] = daily.pull_steps
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == str(PROJECT_DIR)


def test_serve_again_reuses_the_running_service(service: Service):
    state = ServiceState(service.home)
    before = {name: state.pid(name) for name in ("server", "api", "worker")}
    output = run_service_cli(service.env, "serve")
    assert all(before.values()), before
    assert {name: state.pid(name) for name in before} == before
    assert re.search(r"Prefect server\s+already running", output), output
    assert re.search(r"Worker\s+already running", output), output


def test_only_the_worker_of_the_service_holds_the_key(service: Service):
    """`make serve` starts the server and the local API without the key (issue 14, item 4); the
    worker has it only because this service was given PII_HASH_KEY in its environment."""
    state = ServiceState(service.home)
    key = service.env["PII_HASH_KEY"].encode()
    environs = {}
    for name in ("server", "api", "worker"):
        pid = state.pid(name)
        assert pid is not None, name
        environs[name] = (Path("/proc") / str(pid) / "environ").read_bytes()
    assert key in environs["worker"]  # the reading works
    for name in ("server", "api"):
        assert key not in environs[name], name
        assert b"PII_HASH_KEY" not in environs[name], name
