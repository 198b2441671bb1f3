"""Runs of the `daily` deployment scheduled in the past, as after a worker outage: each one, picked
up late by the session's worker, loads the date it was scheduled for and is named after it."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tasks.storage.lake import raw_path
from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e

RECORDS = 200
# A 200-record run is seconds of work, but the worker starts a process per run and runs one at a
# time on a machine the other tests share.
RUN_TIMEOUT_SECONDS = 180


def _missed_slot(days_ago: int) -> dt.datetime:
    """The daily cron's slot (06:00 UTC) `days_ago` days before today, in UTC."""
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days_ago)
    return dt.datetime.combine(day, dt.time(6), tzinfo=dt.UTC)


def _run_missed_slots(service: Service, slots: list[dt.datetime]) -> list[Any]:
    """Create a `daily` run scheduled at each slot (all in the past, so Late at once) and wait
    for the worker to finish them all; the flow runs as the server has them at the end."""
    from prefect.client.orchestration import get_client
    from prefect.settings import temporary_settings
    from prefect.states import Scheduled

    with temporary_settings(service.settings()), get_client(sync_client=True) as client:
        daily = client.read_deployment_by_name("user-metrics-pipeline/daily")
        ids = [
            client.create_flow_run_from_deployment(
                daily.id,
                parameters={"records": RECORDS, "api_url": service.api_url},
                state=Scheduled(scheduled_time=slot),
            ).id
            for slot in slots
        ]
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS * len(slots)
        while True:
            runs = [client.read_flow_run(run_id) for run_id in ids]
            if all(run.state is not None and run.state.is_final() for run in runs):
                return runs
            assert time.monotonic() < deadline, [(r.name, r.state) for r in runs]
            time.sleep(1)


def _assert_loaded(service: Service, run: Any, day: dt.date) -> None:
    """The run completed, is named after `day`, wrote its lake partition and its DuckDB rows."""
    assert run.state.is_completed(), (run.name, run.state)
    assert run.name == f"run-date-{day.isoformat()}"
    assert raw_path(Path(service.env["DATA_LAKE_DIR"]), day).is_file()
    with duckdb.connect(str(service.duckdb_path), read_only=True) as con:
        rows = con.execute(
            "select run_date, count(*) from persons_anonymized where flow_run_id = ? group by 1",
            [str(run.id)],
        ).fetchall()
    assert rows == [(day, RECORDS)]


def test_a_run_picked_up_late_loads_its_scheduled_date(service: Service) -> None:
    slot = _missed_slot(days_ago=2)
    (run,) = _run_missed_slots(service, [slot])
    assert run.expected_start_time == slot  # the worker ran it late, not rescheduled
    _assert_loaded(service, run, slot.date())


def test_missed_slots_each_load_their_own_date(service: Service) -> None:
    slots = [_missed_slot(days_ago=n) for n in (3, 2, 1)]
    runs = _run_missed_slots(service, slots)
    for run, slot in zip(runs, slots, strict=True):
        _assert_loaded(service, run, slot.date())
