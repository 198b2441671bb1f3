"""The `user-metrics-pipeline` and `user-metrics-backfill` flows: wiring and parameters only.

The steps are in flows/steps.py, the work in tasks/, the command line in flows/cli.py
(`python -m flows.cli`).
"""

from __future__ import annotations

from prefect.context import FlowRunContext
from prefect.runtime import deployment, flow_run

from tasks.quality import validator


def _loaded_for_a_flow_run() -> bool:
    """Whether Prefect started this process for a flow run that has not begun yet: a worker's
    `python -m prefect.engine` loading this module as the run's entrypoint."""
    # Outside a run's context, the runtime's flow run id is the one Prefect started the process
    # for; in a CLI or test process it is None.
    return FlowRunContext.get() is None and flow_run.id is not None


if _loaded_for_a_flow_run():
    # GX's import, the longest part of start-up, starts first, in the validator process on the
    # other core, while this one imports the steps below and sets the run up. Prefect is loaded
    # already here (the engine is Prefect); the CLI starts the validator before Prefect's import
    # (flows/cli.py). The imports below therefore come after a statement (E402 is ignored for
    # this file in pyproject.toml).
    validator.start()

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger

from flows.flow_names import BACKFILL_FLOW_NAME, FLOW_NAME
from flows.run_record import RunRecord
from flows.runners import flow_setup
from flows.steps import (
    check_drift,
    commit,
    compose,
    fetch_and_mask,
    finish,
    generalize,
    load,
    log_crash,
    log_failure,
    protect,
    publish,
    report_failure,
    staged_outputs,
    start,
    validate,
    verify,
)
from tasks.common.allocator import use_returning_pool
from tasks.common.concurrency import server_limit
from tasks.common.errors import PipelineError
from tasks.common.inputs import (
    PageSize,
    Records,
    RunDate,
    RunOptions,
    Seed,
    date_range,
    default_run_date,
)
from tasks.common.logcapture import capture_logs
from tasks.common.run_config import (
    RunConfig,
    checked_run_config,
    resolve_run_config,
    with_run_deadline,
)
from tasks.common.secrets import hash_key, key_id, withhold_key
from tasks.common.settings import get_settings
from tasks.quality.validate import prewarm as prewarm_validation
from tasks.reporting.charts import prestart as prestart_charts
from tasks.storage.database import open_db
from tasks.storage.migrations import migrate
from tasks.storage.runs import completed_dates


class RunDeadlineError(PipelineError):
    """The run reached its deadline (the flow's timeout_seconds) and was stopped."""


def _deadline_seconds() -> float | None:
    """This flow run's timeout_seconds; None for a run without one (a backfill's dates)."""
    context = FlowRunContext.get()
    return context.flow.timeout_seconds if context and context.flow else None


def _deadline_error() -> RunDeadlineError:
    """What a run stopped at its deadline records (Prefect's CancelledError says nothing)."""
    seconds = _deadline_seconds()
    if seconds is None:
        return RunDeadlineError("stopped at the deadline of the backfill running it")
    return RunDeadlineError(
        f"the run exceeded its {seconds:g} s deadline (FLOW_TIMEOUT_SECONDS; a CLI run: "
        "--deadline-seconds)"
    )


def run_date_of(run_date: str | dt.date | None) -> str | dt.date:
    """The date this run loads: run_date, else its scheduled start's UTC date (else today)."""
    if run_date is not None:
        return run_date
    # One answer for the run's name and its load: a late deployment run loads its own date.
    return default_run_date(flow_run.scheduled_start_time)


def run_name() -> str:
    """A pipeline run's name: the date it loads (run_date_of)."""
    from prefect.runtime import flow_run as current

    return f"run-date-{str(run_date_of(current.parameters.get('run_date')))[:10]}"


def backfill_name() -> str:
    """A backfill run's name: its range of dates."""
    from prefect.runtime import flow_run as current

    first, last = (str(current.parameters.get(k))[:10] for k in ("start_date", "end_date"))
    return f"backfill-{first}-to-{last}"


# TASK_RUNNER and the timeouts, read when this module loads so that the CLI, a deployment's
# worker and the backfill's subflows all use the same choice; bad settings make a runner that
# refuses the run in one line, not an import error (flows/runners.py).
SETUP = flow_setup()


@flow(
    name=FLOW_NAME,
    task_runner=SETUP.task_runner,
    flow_run_name=run_name,
    persist_result=False,
    on_failure=[log_failure],
    on_crashed=[log_crash],
)
def user_metrics_pipeline(
    api_url: str | None = None,
    records: Records = None,
    page_size: PageSize = None,
    run_date: RunDate | None = None,
    seed: Seed = None,
    locale: str | None = None,
) -> dict[str, Any]:
    """Fetch persons, mask, validate, store them in the lake and DuckDB, and publish the reports.

    Nothing the run writes is visible until every check has passed: it stages, verifies,
    commits, then publishes. Unset parameters take their settings (FAKER_RECORDS, ...).
    """
    use_returning_pool()  # Arrow memory freed by a step goes back to the OS (common/allocator.py)
    options = RunOptions(
        api_url=api_url, records=records, page_size=page_size, seed=seed, locale=locale
    )
    run = RunRecord(run_id=str(flow_run.id or uuid.uuid4()))
    cfg: RunConfig | None = None
    try:
        cfg = checked_run_config(get_settings(), options, run_date_of(run_date))
        # Prefect's timeout stops this function, never the fetch threads: they stop by
        # themselves at the same time (a moment after, so the run's own stop comes first).
        if (seconds := _deadline_seconds()) is not None:
            cfg = with_run_deadline(cfg, time.time() + seconds)
        run.figures.hash_key_id = key_id(hash_key())
        if deployment.id is not None:  # a deployment's run: a process Prefect started for it
            withhold_key()
        cfg, previous_schema = start(cfg, run)
        # GX's import and first validation (~4-5 s) and Chromium (~2 s) come up while pages are
        # fetched, where the run waits on the network anyway; the report's charts render in
        # that Chromium, which is closed however the run ends.
        prewarm_validation()
        with (
            capture_logs() as log_lines,
            prestart_charts(cfg.charts),
            staged_outputs(cfg, run) as staged,
        ):
            batch = fetch_and_mask(cfg, run, staged)
            check_drift(cfg, run, staged, previous_schema)
            validate(cfg, run, staged, batch, None)
            analytical = generalize(cfg, run, batch)
            validate(cfg, run, staged, batch, analytical)
            del batch  # staged in the lake file; keep memory for what follows
            load(cfg, run, staged, analytical)
            protect(cfg, run, staged, analytical)
            del analytical  # staged in DuckDB and summarized; the leak scan reads what was staged
            compose(cfg, run, staged)
            verify(cfg, run, staged, log_lines)
            commit(cfg, run, staged)
        publish(cfg, run, staged)
        return finish(cfg, run, staged)
    except asyncio.CancelledError:
        # How Prefect stops a sync flow run at its timeout_seconds: the run records why, and the
        # error goes on for Prefect to mark the run TimedOut.
        report_failure(cfg, run, _deadline_error())
        raise
    except BaseException as exc:
        # Raised without its cause: a traceback must not print a library's original message.
        raise report_failure(cfg, run, exc) from None


@flow(
    name=BACKFILL_FLOW_NAME,
    flow_run_name=backfill_name,
    persist_result=False,
    on_failure=[log_failure],
    on_crashed=[log_crash],
)
def user_metrics_backfill(
    start_date: RunDate,
    end_date: RunDate,
    force: bool = False,
    options: RunOptions | None = None,
) -> dict[str, str]:
    """Run the pipeline for each date in a range, one batch per date, skipping loaded dates."""
    settings = get_settings()
    options = options or RunOptions()
    days = date_range(start_date, end_date, settings.backfill_max_days)
    resolve_run_config(settings, options, days[0])  # every option checked before the first date
    loaded: set[dt.date] = set()
    if settings.duckdb_path.exists() and not force:
        limit = server_limit(settings.duckdb_limit_name)
        with open_db(settings.duckdb_path, settings.duckdb_lock_timeout_seconds, limit) as con:
            migrate(con)
            loaded = completed_dates(con, days[0], days[-1])
    logger = get_run_logger()
    outcome: dict[str, str] = {}
    for day in days:
        if day in loaded:
            outcome[day.isoformat()] = "skipped"
            logger.info("%s already loaded: skipped (force=True reloads it)", day)
            continue
        state = user_metrics_pipeline(**options.model_dump(), run_date=day, return_state=True)
        outcome[day.isoformat()] = "loaded" if state.is_completed() else "failed"
    failed = [d for d, o in outcome.items() if o == "failed"]
    if failed:
        raise PipelineError(f"backfill failed for {len(failed)} date(s): {', '.join(failed)}")
    return outcome


# What the deployments run (prefect.yaml's entrypoints): the same flows with a timeout, so a hung
# run cannot block the schedule. No whole-run retry: a failed page range is retried alone (its
# fetch task), and every other failure (input, validation, drift, a leak, the database held past
# DUCKDB_LOCK_TIMEOUT_SECONDS) would fail the same way again at once. A CLI run takes the same
# deadline from flows/cli.py.
deployed_pipeline = user_metrics_pipeline.with_options(timeout_seconds=SETUP.flow_timeout_seconds)
deployed_backfill = user_metrics_backfill.with_options(
    timeout_seconds=SETUP.backfill_timeout_seconds
)
