"""How the flows run: the task runner (threads or Dask) and the deployments' timeouts.

The settings (TASK_RUNNER, DASK_*, FLOW_TIMEOUT_SECONDS, BACKFILL_TIMEOUT_SECONDS) are fields of
`Settings`; the flow decorators take them when the flow module loads (`flow_setup`). A refused
setting must not make that module unimportable (a traceback in the CLI, "could not load flow"
in a deployment run), so the module loads with a runner that refuses the run in one line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, get_args

from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import Task

from tasks.common.errors import display_url
from tasks.common.inputs import InputError, settings_error_line
from tasks.common.secrets import PSEUDONYM_WORKER_ENV
from tasks.common.settings import RunnerKind, Settings

RUNNER_KINDS: tuple[str, ...] = get_args(RunnerKind)
# Fetch concurrency is bounded by the HTTP layer's gate, so threads only keep tasks flowing.
DEFAULT_THREADS = 16
# The project is not a package (pyproject's [tool.uv] package = false): uv installs its extras.
DASK_EXTRA_MISSING = "TASK_RUNNER=dask needs the dask extra: uv sync --extra dask"


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
        "(certificates in DASK_DISTRIBUTED__COMM__TLS__*), or set DASK_TRUSTED_NETWORK=true "
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
    # Imported here: dask/distributed are slow to import, the default runner never needs them,
    # and they are an extra that an install without scale-out leaves out.
    try:
        from prefect_dask.task_runners import DaskTaskRunner
    except ImportError:
        raise DaskSettingError(DASK_EXTRA_MISSING) from None
    if address:
        check_dask_address(address, trusted_network)

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

    def __init__(self, error: InputError) -> None:
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
        raise type(self.error)(str(self.error))


def task_runner(settings: Settings) -> TaskRunner[Any]:
    """The runner TASK_RUNNER names, with its DASK_* settings; raises DaskSettingError if it is
    unusable (a clear-text DASK_ADDRESS, the dask extra not installed)."""
    if settings.task_runner != "dask":  # the DASK_* settings mean nothing to it
        return make_task_runner(settings.task_runner)
    return make_task_runner(
        "dask",
        settings.dask_address or None,
        settings.dask_workers,
        allow_spill=settings.dask_allow_spill,
        trusted_network=settings.dask_trusted_network,
    )


@dataclass(frozen=True)
class FlowSetup:
    """What the flow decorators take from the settings when the flow module loads."""

    task_runner: TaskRunner[Any]
    # None only with a RefusedTaskRunner: that run is refused before it could need a timeout.
    flow_timeout_seconds: int | None
    backfill_timeout_seconds: int | None


def flow_setup() -> FlowSetup:
    """The flows' runner and the deployments' timeouts from the settings; never raises.

    Called when flows/user_metrics.py loads, where a refusal raised would be an import traceback
    in the CLI and a "could not load flow" crash in a deployment run. Instead the module loads
    with a RefusedTaskRunner holding the refusal's one line (the bad settings named, never
    replaced by defaults): the CLI refuses the same settings before Prefect starts (exit 2),
    and a run fails through the flow's own failure path before anything is fetched or sent.
    """
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError, or an InputError of the settings
        return FlowSetup(RefusedTaskRunner(InputError(settings_error_line(exc))), None, None)
    try:
        runner = task_runner(settings)
    except DaskSettingError as error:
        runner = RefusedTaskRunner(error)
    return FlowSetup(runner, settings.flow_timeout_seconds, settings.backfill_timeout_seconds)
