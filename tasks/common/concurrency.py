"""Prefect global concurrency limits the pipeline shares between processes and hosts, used only
when the Prefect server this process talks to has them (`make serve` and the compose worker
create them; a temporary server per process shares nothing)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

# The shortest lease Prefect grants: a holder killed outright frees its slot this soon, while a
# live holder's lease is renewed in the background for as long as it holds the slot.
LEASE_SECONDS = 60.0


def server_limit(name: str, *, decaying: bool = False) -> str | None:
    """`name` if this process's Prefect server (PREFECT_API_URL) has that limit, active (and
    with a slot decay when `decaying`); else None."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return None
    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        return None
    except httpx.TransportError:
        # No server to share a limit through (`--check` with the server down): no run can
        # start either, and the file lock still guards this host.
        return None
    usable = limit.active and (limit.slot_decay_per_second or not decaying)
    return name if usable else None


@contextmanager
def holding_slot(name: str | None, timeout: float) -> Iterator[None]:
    """One slot of limit `name` for the block (no limit: nothing to hold); TimeoutError if no
    slot came free within `timeout` seconds."""
    if name is None:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(
        name,
        occupy=1,
        timeout_seconds=timeout,
        strict=True,
        lease_duration=LEASE_SECONDS,
        # A failed renewal (the server briefly unreachable) must not tear a DuckDB commit in
        # half: the file lock below still guards this host.
        raise_on_lease_renewal_failure=False,
    ):
        yield
