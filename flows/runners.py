"""How the flows run: the task runner (threads or Dask), and the deployments' timeouts and retries.

Read from the environment rather than the settings object: the flow decorators need them at
import time, and a bad unrelated setting must not make the flow module unimportable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, NoReturn

from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import Task

from tasks.common.errors import display_url
from tasks.common.inputs import InputError
from tasks.common.secrets import PSEUDONYM_WORKER_ENV

RUNNER_KINDS: tuple[str, ...] = ("threads", "dask")
# Fetch concurrency is bounded by the HTTP layer's gate, so threads only keep tasks flowing.
DEFAULT_THREADS = 16

ALLOW_SPILL_ENV = "DASK_ALLOW_SPILL"
TRUSTED_NETWORK_ENV = "DASK_TRUSTED_NETWORK"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def no_spill_worker_kwargs() -> dict[str, Any]:
    """LocalCluster worker options that keep every task result in memory, never on disk.

    A task result is a masked batch plus the hashes of its raw values (for the leak scan); a
    spilling worker pickles such results into its scratch directory: unencrypted, outside the
    lake's staging and cleanup, and left behind if the worker dies.

    The Worker options `memory_target_fraction` and `memory_spill_fraction` no longer exist
    (distributed 2026.8 reads the fractions from dask config only, and hands unknown worker
    options to Server, which refuses them: the Nanny fails to start). So the fractions go in
    the Nanny's `config`, which the worker process applies after reading its environment: they
    win over DASK_DISTRIBUTED__* variables and YAML. `data=dict` makes the worker's store a
    plain dict, so no SpillBuffer (the only code that writes task results to disk) exists,
    whatever the config says.
    """
    return {
        "config": {
            "distributed.worker.memory.target": False,
            "distributed.worker.memory.spill": False,
        },
        "data": dict,
    }


class DaskSettingError(InputError):
    """A TASK_RUNNER / DASK_* setting is unusable or unsafe; the message says which and why."""


def check_dask_address(address: str, trusted_network: bool = False) -> str:
    """The address, if batches sent to it are encrypted (tls://) or the network is trusted."""
    scheme = address.split("://", 1)[0].lower() if "://" in address else ""
    if scheme == "tls" or trusted_network:
        return address
    what = f"uses {scheme}://" if scheme else "has no scheme (Dask reads it as tcp://)"
    raise DaskSettingError(
        f"DASK_ADDRESS {display_url(address)} {what}: masked batches and the hashes of raw "
        "values would cross the network unencrypted; use the scheduler's tls:// address "
        f"(certificates in DASK_DISTRIBUTED__COMM__TLS__*), or set {TRUSTED_NETWORK_ENV}=true "
        "if this network is trusted"
    )


def make_task_runner(
    kind: str = "threads",
    address: str | None = None,
    workers: int = 2,
    *,
    allow_spill: bool = False,
    trusted_network: bool = False,
) -> TaskRunner[Any]:
    """`threads`, or `dask` on a new LocalCluster or on an existing scheduler at `address`."""
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=DEFAULT_THREADS)
    if kind != "dask":
        raise DaskSettingError(f"task runner {kind!r} is not one of {', '.join(RUNNER_KINDS)}")
    if address:
        check_dask_address(address, trusted_network)
    if workers < 1:
        raise DaskSettingError(f"DASK_WORKERS={workers} must be >= 1")
    # Imported here: dask/distributed are slow to import and the default runner never needs them.
    from prefect_dask.task_runners import DaskTaskRunner

    if address:
        # A real cluster: its workers need this project's code and env (PII_HASH_KEY etc.), and
        # whether they spill is their own config (README, Scaling out).
        return DaskTaskRunner(address=address)
    cluster_kwargs: dict[str, Any] = {
        "n_workers": workers,
        # Processes sidestep the GIL (JSON parsing and Arrow building are CPU-bound); a few threads
        # per worker overlap the HTTP waits of fetch tasks. Processes also mean Nanny workers,
        # which is what takes no_spill_worker_kwargs()' `config`.
        "processes": True,
        "threads_per_worker": 4,
        # No dashboard: it needs bokeh and a port, and a pipeline run has no one watching it.
        "dashboard_address": None,
        # The workers make pseudonyms, and the CLI or flow run took the key out of its own
        # environment before they start (tasks.common.secrets.withhold_key): the Nanny sets
        # it inside each worker process, not in the environment it is started with. Filled
        # by then; read when the cluster starts, with the flow run.
        "env": PSEUDONYM_WORKER_ENV,
    }
    if not allow_spill:
        cluster_kwargs.update(no_spill_worker_kwargs())
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs)


class RefusedTaskRunner(TaskRunner[Any]):
    """Stands in for a runner whose settings were refused: the first task submitted fails the
    run with the refusal's one line, and nothing is sent anywhere."""

    def __init__(self, error: DaskSettingError) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Prefect's own, unannotated
        self.error = error

    def duplicate(self) -> RefusedTaskRunner:
        """The same refusal (Prefect enters a duplicate for each flow run)."""
        return RefusedTaskRunner(self.error)

    def submit(
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, Any] | None = None,
    ) -> NoReturn:
        """Raise the refusal: this runner runs nothing."""
        raise DaskSettingError(str(self.error))


def _flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise DaskSettingError(f"{name}={value!r} is not true or false")
    return value in _TRUE


def runner_from_env() -> TaskRunner[Any]:
    """The runner named by TASK_RUNNER / DASK_ADDRESS / DASK_WORKERS / DASK_ALLOW_SPILL /
    DASK_TRUSTED_NETWORK (threads when unset).

    Called when flows/user_metrics.py loads (the flow decorator), so a refusal raised here would
    be an import traceback in the CLI and a "could not load flow" crash in a deployment run.
    Instead the module loads with a RefusedTaskRunner, and the run fails at its first task,
    before anything is fetched or sent, through the flow's own failure path: one `error:` line
    in the CLI, the same line as the Failed state's message and in `run-failure`, no retry.
    """
    try:
        kind = os.environ.get("TASK_RUNNER", "threads").strip().lower() or "threads"
        if kind != "dask":  # the DASK_* settings mean nothing to it
            return make_task_runner(kind)
        address = os.environ.get("DASK_ADDRESS", "").strip() or None
        workers_text = os.environ.get("DASK_WORKERS", "").strip() or "2"
        if not workers_text.isdigit():
            raise DaskSettingError(f"DASK_WORKERS={workers_text!r} is not a whole number")
        return make_task_runner(
            kind,
            address,
            int(workers_text),
            allow_spill=_flag(ALLOW_SPILL_ENV),
            trusted_network=_flag(TRUSTED_NETWORK_ENV),
        )
    except DaskSettingError as error:
        return RefusedTaskRunner(error)


# Against the public API the rate limit sets a run's length: at 25 requests a minute the 30
# pages of 30,000 records take over a minute, the 1,000 pages of a million records 40 minutes.
# An hour covers the largest run we plan for with room to spare, and stops a hung run long
# before the next day's schedule.
DEFAULT_FLOW_TIMEOUT_SECONDS = 3600
# One backfill runs its dates one after another: a day of them.
DEFAULT_BACKFILL_TIMEOUT_SECONDS = 86_400


def _seconds(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else default


def flow_timeout_seconds() -> int:
    """FLOW_TIMEOUT_SECONDS: a deployment run of the pipeline that runs longer fails."""
    return _seconds("FLOW_TIMEOUT_SECONDS", DEFAULT_FLOW_TIMEOUT_SECONDS)


def backfill_timeout_seconds() -> int:
    """BACKFILL_TIMEOUT_SECONDS: the same for a backfill deployment run, all its dates."""
    return _seconds("BACKFILL_TIMEOUT_SECONDS", DEFAULT_BACKFILL_TIMEOUT_SECONDS)
