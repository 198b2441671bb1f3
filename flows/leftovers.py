"""What a killed run leaves outside the lake and DuckDB: its Prefect flow run, still `Running`
(or `Pending`) in the UI, and the chart browser's temp folders.

`--check` and the start of every run call `repair_leftovers` after the DuckDB check
(`tasks.storage.recovery.check`). A flow run of our flows is dead when the process its
pipeline_runs row names is gone, by the rule that check applies to the rows
(`recovery.process_gone`): such a flow run is marked Crashed. A backfill's own flow run has no row:
its subflows run in its process, so it is dead when the process of its latest subflow is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import FlowRun

from flows.flow_names import BACKFILL_FLOW_NAME, FLOW_NAME
from tasks.common.errors import display_url
from tasks.storage.database import DatabaseBusyError, open_db
from tasks.storage.recovery import Finding, RunProcess, remove_dead_temp_dirs, run_processes

# A run's start waits this long at most for the DuckDB file to look flow runs up: a live run
# holding the file for its load would otherwise hold this one up. Skipped, the same flow runs are
# found by the next check.
START_LOOKUP_SECONDS = 2.0
_PAGE = 200


def repair_leftovers(
    found_by: str,
    db_path: Path,
    current: str | None = None,
    unreachable: str | None = None,
    *,
    timeout: float,
    limit: str | None,
) -> tuple[list[Finding], list[str]]:
    """Crash the dead flow runs of our flows and remove dead processes' temp folders.

    Returns what was found, as the DuckDB check's findings, and notes on what could not be
    checked (one line each). `found_by` names the check in the Crashed states' message;
    `db_path` is the DuckDB file whose pipeline_runs rows name the processes, opened with
    `timeout` and `limit` as `open_db` takes them; `current` is the
    flow run whose start does the check (never touched); `unreachable` says why there is no
    Prefect API to ask (flow runs are then not checked). Never raises.
    """
    findings = remove_dead_temp_dirs()
    if unreachable:
        return findings, [unreachable]
    notes = []
    try:
        findings += crash_dead_flow_runs(found_by, db_path, current, timeout=timeout, limit=limit)
    except DatabaseBusyError:
        if current is None:  # a run's start leaves them to the next check, and says nothing
            notes.append("Prefect flow runs not checked: another run holds the DuckDB file")
    except Exception as exc:  # the API went away, or answered oddly: the next check retries
        notes.append(f"Prefect flow runs not checked: {type(exc).__name__} from the Prefect API")
    return findings, notes


def crash_dead_flow_runs(
    found_by: str, db_path: Path, current: str | None = None, *, timeout: float, limit: str | None
) -> list[Finding]:
    """Mark Crashed every Running or Pending flow run of our flows whose process is gone."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        pipelines = [r for r in _unfinished(client, FLOW_NAME) if str(r.id) != current]
        backfills = [r for r in _unfinished(client, BACKFILL_FLOW_NAME) if str(r.id) != current]
        children = {str(b.id): _children(client, b) for b in backfills}
        ids = [str(r.id) for r in pipelines] + [str(c.id) for cs in children.values() for c in cs]
        if not ids:
            return []
        # A run's start waits briefly: a busy file leaves the check to the next one.
        wait = min(timeout, START_LOOKUP_SECONDS) if current is not None else timeout
        processes = _lookup(db_path, ids, wait, limit)
        dead = [
            (run, process)
            for run in pipelines
            if (process := processes.get(str(run.id))) and _owned_by_dead(run, process)
        ]
        for backfill in backfills:
            recorded = [
                process
                for child in children[str(backfill.id)]
                if (process := processes.get(str(child.id))) and process.started_at
            ]
            if not recorded:
                continue  # killed before its first subflow recorded a process: cannot tell
            latest = max(recorded, key=lambda p: p.started_at or dt.datetime.min)
            if _owned_by_dead(backfill, latest):
                dead.append((backfill, RunProcess(None, latest.started_at, True)))
        findings = []
        for run, process in dead:
            state = run.state_name or "Running"
            message = f"the process running this flow run is gone (found by {found_by})"
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            what = f"flow run {run.id} ({run.name}) was still {state}: marked Crashed"
            findings.append(Finding(what, process.run_date, True))
    return findings


def _unfinished(client: Any, flow_name: str) -> list[FlowRun]:
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    flows = FlowFilter(name=FlowFilterName(any_=[flow_name]))
    types = FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
    return _all_pages(
        client,
        flow_filter=flows,
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=types)),
    )


def _children(client: Any, backfill: FlowRun) -> list[FlowRun]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    parent = FlowRunFilterParentFlowRunId(any_=[backfill.id])
    return _all_pages(client, flow_run_filter=FlowRunFilter(parent_flow_run_id=parent))


def _all_pages(client: Any, **filters: Any) -> list[FlowRun]:
    runs: list[FlowRun] = []
    while True:
        page = client.read_flow_runs(**filters, limit=_PAGE, offset=len(runs))
        runs += page
        if len(page) < _PAGE:
            return runs


def _lookup(
    db_path: Path, flow_run_ids: list[str], wait: float, limit: str | None
) -> dict[str, RunProcess]:
    if not Path(db_path).exists():
        return {}
    with open_db(db_path, wait, limit) as con:
        return run_processes(con, flow_run_ids)


def _owned_by_dead(run: FlowRun, process: RunProcess) -> bool:
    """Whether the flow run is still in the state the dead process left it in.

    A flow run retried from the UI keeps its id and runs in a new process, which records itself
    only once it has started: its new state is newer than the dead process's record, so it is
    left alone.
    """
    if not process.gone or process.started_at is None or run.state is None:
        return False
    entered = run.state.timestamp.astimezone(dt.UTC).replace(tzinfo=None)
    return entered <= process.started_at


@contextmanager
def check_api() -> Iterator[str | None]:
    """The Prefect API `--check` talks to: PREFECT_API_URL, else the local server if it runs.

    Yields a note (one line) when neither answers; never starts a server, which would take
    longer than the check.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from flows.processes import ServiceState
    from flows.server import base_env, client_settings

    url = PREFECT_API_URL.value()
    if not url:
        env = base_env()
        url = ServiceState(Path(env["PREFECT_HOME"])).urls().get("server")
        if not url:
            yield (
                "Prefect flow runs not checked: no Prefect API is set or running "
                "(set PREFECT_API_URL, or start the local server: make serve)"
            )
            return
    settings: dict[Any, Any] = client_settings(url)
    # Asked once, without the client's retries: an API that is down is said in one line, at once.
    with (
        temporary_settings({**settings, PREFECT_CLIENT_MAX_RETRIES: 0}),
        get_client(sync_client=True) as client,
    ):
        down = client.api_healthcheck()
    if down is not None:
        yield f"Prefect flow runs not checked: no Prefect API answers at {display_url(url)}"
        return
    with temporary_settings(settings):
        yield None
