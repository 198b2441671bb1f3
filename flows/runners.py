"""Task runner choice for the flow: Prefect's thread pool (default) or Dask via prefect-dask."""

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
    """The runner named by TASK_RUNNER / DASK_ADDRESS / DASK_WORKERS (threads when unset).

    Read from the environment rather than the settings object, because the flow decorator calls
    this at import time and a bad unrelated setting must not make the module unimportable.
    """
    kind = os.environ.get("TASK_RUNNER", "threads").strip().lower() or "threads"
    address = os.environ.get("DASK_ADDRESS", "").strip() or None
    workers = int(os.environ.get("DASK_WORKERS", "2") or 2)
    return make_task_runner(kind, address, workers)
