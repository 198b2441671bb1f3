"""How the flows run: the task runner (threads or Dask), and the deployments' timeouts and retries.

Read from the environment rather than the settings object: the flow decorators need them at
import time, and a bad unrelated setting must not make the flow module unimportable.
"""

from __future__ import annotations

import os
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

RUNNER_KINDS: tuple[str, ...] = ("threads", "dask")
# Fetch concurrency is bounded by the HTTP layer's gate, so threads only keep tasks flowing.
DEFAULT_THREADS = 16


def make_task_runner(
    kind: str = "threads", address: str | None = None, workers: int = 2
) -> TaskRunner[Any]:
    """`threads`, or `dask` on a new LocalCluster or on an existing scheduler at `address`."""
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=DEFAULT_THREADS)
    if kind != "dask":
        raise ValueError(f"task runner {kind!r} is not one of {', '.join(RUNNER_KINDS)}")
    # Imported here: dask/distributed cost ~1 s to import and the default runner never needs them.
    from prefect_dask.task_runners import DaskTaskRunner

    if address:
        # A real cluster: its workers need this project's code and env (PII_HASH_KEY etc.).
        return DaskTaskRunner(address=address)
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    cluster_kwargs: dict[str, Any] = {
        "n_workers": workers,
        # Processes sidestep the GIL (JSON parsing and Arrow building are CPU-bound); a few threads
        # per worker overlap the HTTP waits of fetch tasks.
        "processes": True,
        "threads_per_worker": 4,
        # No dashboard: it needs bokeh and a port, and a pipeline run has no one watching it.
        "dashboard_address": None,
    }
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs)


def runner_from_env() -> TaskRunner[Any]:
    """The runner named by TASK_RUNNER / DASK_ADDRESS / DASK_WORKERS (threads when unset)."""
    kind = os.environ.get("TASK_RUNNER", "threads").strip().lower() or "threads"
    address = os.environ.get("DASK_ADDRESS", "").strip() or None
    workers = int(os.environ.get("DASK_WORKERS", "2") or 2)
    return make_task_runner(kind, address, workers)


# A 30,000-record run takes about 20 s against a nearby API and about 90 s against the public
# one at 25 requests a minute; a million records at that rate take about 40 minutes. An hour
# covers the largest run we plan for with room to spare, and stops a hung run long before the
# next day's schedule.
DEFAULT_FLOW_TIMEOUT_SECONDS = 3600
# One backfill runs its dates one after another: a day of them.
DEFAULT_BACKFILL_TIMEOUT_SECONDS = 86_400
# A transient failure (the API down past its retries, the database held by another run) is
# tried once more after this long: long enough for a short outage or a long run to pass.
DEFAULT_RETRY_DELAY_SECONDS = 600


def _seconds(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else default


def flow_timeout_seconds() -> int:
    """FLOW_TIMEOUT_SECONDS: a deployment run of the pipeline that runs longer fails."""
    return _seconds("FLOW_TIMEOUT_SECONDS", DEFAULT_FLOW_TIMEOUT_SECONDS)


def backfill_timeout_seconds() -> int:
    """BACKFILL_TIMEOUT_SECONDS: the same for a backfill deployment run, all its dates."""
    return _seconds("BACKFILL_TIMEOUT_SECONDS", DEFAULT_BACKFILL_TIMEOUT_SECONDS)


def retry_delay_seconds() -> int:
    """FLOW_RETRY_DELAY_SECONDS: the wait before a deployment run retries a transient failure."""
    return _seconds("FLOW_RETRY_DELAY_SECONDS", DEFAULT_RETRY_DELAY_SECONDS)
