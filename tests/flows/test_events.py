"""`faker.batch.committed`: one event per committed date, read back from a real Prefect server."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.events import Event, emit_event
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)

from flows.user_metrics import user_metrics_pipeline
from tasks.ingest.fetch import close_clients
from tasks.storage.events import BATCH_COMMITTED

RUN_DATE = dt.date(2026, 10, 30)
# Events reach the server from a background sender and are stored by a service of the server:
# on a busy two-core machine that can take seconds.
EVENT_WAIT_SECONDS = 60.0


@pytest.fixture(autouse=True)
def _fresh_clients():
    yield
    close_clients()


def events(name: str, since: dt.datetime, resource: str | None = None) -> list[Event]:
    """The stored events called `name` that occurred since `since`, of one resource if given."""
    query = EventFilter(
        occurred=EventOccurredFilter(since=since),
        event=EventNameFilter(name=[name]),
        resource=EventResourceFilter(id=[resource]) if resource else None,
    )
    with get_client(sync_client=True) as client:
        return list(client.read_events(filter=query, limit=50).events)


def wait_for_events(name: str, since: dt.datetime, resource: str | None = None) -> list[Event]:
    """The events of `events(...)` once there is at least one."""
    deadline = time.monotonic() + EVENT_WAIT_SECONDS
    while not (found := events(name, since, resource)):
        assert time.monotonic() < deadline, f"no {name} event stored in {EVENT_WAIT_SECONDS} s"
        time.sleep(0.2)  # a poll of the server's event store
    return found


def of_run(found: list[Event], flow_run_id: object) -> list[Event]:
    """The events whose payload names the flow run."""
    return [e for e in found if e.payload.get("flow_run_id") == str(flow_run_id)]


def test_a_committed_date_emits_one_event_with_counts(api, pipeline_env, prefect_storage):
    since = dt.datetime.now(dt.UTC)
    summary = user_metrics_pipeline(api_url=api.base_url, records=200, run_date=RUN_DATE)
    flow_run = f"prefect.flow-run.{summary['flow_run_id']}"

    resource = "faker.batch.2026-10-30"
    [event] = of_run(wait_for_events(BATCH_COMMITTED, since, resource), summary["flow_run_id"])
    assert event.resource.id == resource
    assert event.resource["faker.run-date"] == "2026-10-30"
    assert event.payload == {
        "run_date": "2026-10-30",
        "flow_run_id": summary["flow_run_id"],
        "records": 200,
        "k_min": summary["k_min"],
        "leak_outputs_scanned": summary["leak_outputs_scanned"],
        "leak_hits": 0,
    }
    assert summary["k_min"] >= 1 and summary["leak_outputs_scanned"] > 0
    # Prefect relates the event to the run that committed the date, so the UI links the two.
    assert flow_run in {related.id for related in event.related}


def test_a_failed_run_emits_no_committed_event(start_api, pipeline_env, prefect_storage):
    since = dt.datetime.now(dt.UTC)
    bad = start_api(drift=("bad-values",))  # fails validation, before anything is committed
    state = user_metrics_pipeline(
        api_url=bad.base_url, records=200, run_date=RUN_DATE, return_state=True
    )
    assert state.is_failed()

    # Events from this process reach the server in the order they were sent: once a marker sent
    # after the run is stored, whatever the run sent is stored too.
    marker = f"faker.test.{uuid.uuid4()}"
    emit_event(event="faker.test.marker", resource={"prefect.resource.id": marker})
    wait_for_events("faker.test.marker", since, marker)
    assert of_run(events(BATCH_COMMITTED, since), state.state_details.flow_run_id) == []
