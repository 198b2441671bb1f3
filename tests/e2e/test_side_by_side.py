"""A range backfill and the daily run side by side on the session's real server, pool and worker:
both complete, and the daily run does not wait for the whole backfill. They share no pool slot:
the DuckDB file is taken in turn through its global concurrency limit."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import duckdb
import pytest

from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e

# Dates no other e2e test loads; enough records per date that the backfill outlasts a daily run.
BACKFILL_DAYS = [dt.date(2003, 5, d) for d in range(1, 5)]
BACKFILL_RECORDS = 3000
DAILY_DATE = dt.date(2003, 6, 1)
DAILY_RECORDS = 200
# Both runs share a machine with the other tests: the worker starts a process for each.
TIMEOUT_SECONDS = 600


def _wait(client: Any, run_id: Any, done: Any, what: str) -> Any:
    """The flow run once `done(run)` holds; fails after TIMEOUT_SECONDS."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while True:
        run = client.read_flow_run(run_id)
        if done(run):
            return run
        assert time.monotonic() < deadline, f"{what}: {run.name} is {run.state}"
        time.sleep(0.5)


def test_a_daily_run_completes_beside_a_range_backfill(service: Service) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import temporary_settings

    with temporary_settings(service.settings()), get_client(sync_client=True) as client:
        backfill_deployment = client.read_deployment_by_name("user-metrics-backfill/range")
        daily_deployment = client.read_deployment_by_name("user-metrics-pipeline/daily")
        backfill = client.create_flow_run_from_deployment(
            backfill_deployment.id,
            parameters={
                "start_date": BACKFILL_DAYS[0].isoformat(),
                "end_date": BACKFILL_DAYS[-1].isoformat(),
                "force": True,
                "options": {"records": BACKFILL_RECORDS, "api_url": service.api_url},
            },
        )
        _wait(client, backfill.id, lambda r: r.state.is_running(), "backfill start")
        daily = client.create_flow_run_from_deployment(
            daily_deployment.id,
            parameters={
                "run_date": DAILY_DATE.isoformat(),
                "records": DAILY_RECORDS,
                "api_url": service.api_url,
            },
        )
        daily = _wait(client, daily.id, lambda r: r.state.is_final(), "daily run")
        backfill_now = client.read_flow_run(backfill.id)
        backfill = _wait(client, backfill.id, lambda r: r.state.is_final(), "backfill")
    assert daily.state.is_completed(), daily.state
    assert backfill.state.is_completed(), backfill.state
    # The daily run finished while the backfill was still loading its dates.
    assert not backfill_now.state.is_final(), backfill_now.state
    assert daily.end_time < backfill.end_time
    with duckdb.connect(str(service.duckdb_path), read_only=True) as con:
        loaded = con.execute(
            "select run_date, count(*) from persons_anonymized where run_date between ? and ? "
            "group by 1 order by 1",
            [BACKFILL_DAYS[0], DAILY_DATE],
        ).fetchall()
    assert loaded == [(d, BACKFILL_RECORDS) for d in BACKFILL_DAYS] + [(DAILY_DATE, DAILY_RECORDS)]
