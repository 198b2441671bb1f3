"""The Prefect event a committed date emits, so automations and downstream jobs can react to it.

One event per committed date: `faker.batch.committed`, whose resource is the date's batch
(`faker.batch.<YYYY-MM-DD>`) and whose payload holds counts only, never a value of the batch.
Prefect attaches the flow run, its flow and deployment as related resources.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from prefect.events import Event, emit_event

BATCH_COMMITTED = "faker.batch.committed"
BATCH_RESOURCE_PREFIX = "faker.batch."


@dataclass(frozen=True)
class BatchCommitted:
    """What the event says of a committed date: counts and the run's id."""

    run_date: dt.date
    flow_run_id: str
    records: int
    k_min: int
    leak_outputs_scanned: int
    leak_hits: int

    def resource(self) -> dict[str, str]:
        """The date's batch as a Prefect resource."""
        day = self.run_date.isoformat()
        return {
            "prefect.resource.id": f"{BATCH_RESOURCE_PREFIX}{day}",
            "prefect.resource.name": f"persons batch {day}",
            "faker.run-date": day,
        }

    def payload(self) -> dict[str, Any]:
        """The counts, the run date and the run's id, as JSON values."""
        return {**asdict(self), "run_date": self.run_date.isoformat()}


def emit_batch_committed(committed: BatchCommitted) -> Event | None:
    """Emit `faker.batch.committed` for the date; None when Prefect emits no events here."""
    # Prefect sends events from a background worker and never raises here for a server that
    # cannot be reached: a committed date stays committed whatever becomes of its event.
    return emit_event(
        event=BATCH_COMMITTED, resource=committed.resource(), payload=committed.payload()
    )
