"""The `user-metrics-pipeline` and `user-metrics-backfill` flows, and the CLI.

Wiring and typed parameters only: the stages are in flows/stages.py, the work in tasks/.

CLI: python -m flows.user_metrics --api-url URL --records N --page-size P --run-date YYYY-MM-DD
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import ValidationError

from flows.cli import one_line_console, parse_args, print_backfill, print_summary
from flows.runners import runner_from_env
from flows.stages import RunRecord, log_failure, report_failure, run_stages
from tasks.allocator import use_returning_pool
from tasks.charts import prestart as prestart_charts
from tasks.errors import PipelineError, failure_text, redact
from tasks.load import completed_dates, migrate, open_db
from tasks.logcapture import capture_logs
from tasks.params import InputError, check_reachable, date_range, settings_error_line
from tasks.privacy_report import PRIVACY_REPORT_KEY
from tasks.publish import ARTIFACT_KEYS
from tasks.recovery import check
from tasks.run_config import RunConfig, resolve_run_config
from tasks.runs import record_end, record_start
from tasks.secrets import key_id
from tasks.settings import Settings, get_settings
from tasks.steps import VALIDATION_ARTIFACT_KEY, hash_key

FLOW_NAME = "user-metrics-pipeline"
BACKFILL_FLOW_NAME = "user-metrics-backfill"
ARTIFACTS = (*ARTIFACT_KEYS, VALIDATION_ARTIFACT_KEY, PRIVACY_REPORT_KEY)
# Prefect gives its temporary API server 20 s to start; a first run took 21-33 s on a busy
# 2-core machine. The CLI, `make run` and backfills give it this long unless the user says.
STARTUP_BUDGET_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STARTUP_BUDGET_SECONDS = 180


def _checked_config(settings: Settings, **overrides: Any) -> RunConfig:
    """The run's config once every input is checked: values, API reachable, HMAC key present.

    Shared by the CLI (before Prefect starts) and the flow (for deployment runs), so both refuse
    bad input before any request or write.
    """
    cfg = resolve_run_config(settings, **overrides)
    check_reachable(cfg.api_url)
    hash_key()
    return cfg


@flow(
    name=FLOW_NAME,
    # TASK_RUNNER=threads (default: 16 threads; fetch concurrency is bounded by the HTTP gate)
    # or dask (DASK_ADDRESS, else a LocalCluster of DASK_WORKERS), read at import so that the CLI,
    # a deployment's worker and the backfill's subflows all use the same choice.
    task_runner=runner_from_env(),
    persist_result=False,
    on_failure=[log_failure],
)
def user_metrics_pipeline(
    api_url: str | None = None,
    records: int | None = None,
    page_size: int | None = None,
    run_date: dt.date | None = None,
    seed: int | None = None,
    locale: str | None = None,
) -> dict[str, Any]:
    """Fetch persons, mask, validate, store them in the lake and DuckDB, and publish the reports."""
    started = time.perf_counter()
    use_returning_pool()  # Arrow memory freed by a stage goes back to the OS (tasks/allocator.py)
    settings = get_settings()
    run = RunRecord(run_id=str(flow_run.id or uuid.uuid4()))
    cfg: RunConfig | None = None
    logger = get_run_logger()
    lock_timeout = settings.duckdb_lock_timeout_seconds
    try:
        cfg = _checked_config(
            settings,
            api_url=api_url,
            records=records,
            page_size=page_size,
            run_date=run_date,
            seed=seed,
            locale=locale,
        )
        run.figures["hash_key_id"] = key_id(hash_key())
        previous_schema, findings = record_start(cfg, run.run_id, lock_timeout)
        for finding in findings:
            logger.warning("check: %s", finding.line())
        # Chromium (~2 s to start) comes up while pages are fetched; the report's charts render
        # in it, and it is closed however the run ends.
        with capture_logs() as log_lines, prestart_charts():
            outcome = run_stages(cfg, run, previous_schema, log_lines)
        run.stage = "finish"
        run.figures["seconds_total"] = time.perf_counter() - started
        record_end(cfg, run.run_id, "completed", run.figures, lock_timeout)
    except BaseException as exc:
        run.figures["seconds_total"] = time.perf_counter() - started
        # Raised without its cause: a traceback must not print a library's original message.
        raise report_failure(cfg, run, exc) from None
    logger.info(
        "loaded %d records for %s; lake file %s; %.1fs",
        run.figures["records_loaded"],
        cfg.run_date,
        outcome["lake_file"],
        run.figures["seconds_total"],
    )
    return {
        **run.figures,
        **outcome,
        "flow_run_id": run.run_id,
        "run_date": cfg.run_date.isoformat(),
        "records_requested": cfg.records,
        "duckdb_path": str(cfg.duckdb_path),
    }


@flow(name=BACKFILL_FLOW_NAME, persist_result=False, on_failure=[log_failure])
def user_metrics_backfill(
    start_date: dt.date,
    end_date: dt.date,
    force: bool = False,
    api_url: str | None = None,
    records: int | None = None,
    page_size: int | None = None,
    seed: int | None = None,
    locale: str | None = None,
) -> dict[str, str]:
    """Run the pipeline for each date in a range, one batch per date, skipping loaded dates."""
    settings = get_settings()
    days = date_range(start_date, end_date, settings.backfill_max_days)
    # Check every override once, before the first date runs.
    resolve_run_config(settings, api_url=api_url, records=records, page_size=page_size, seed=seed)
    loaded: set[dt.date] = set()
    if settings.duckdb_path.exists() and not force:
        with open_db(settings.duckdb_path, settings.duckdb_lock_timeout_seconds) as con:
            migrate(con)
            loaded = completed_dates(con, days[0], days[-1])
    logger = get_run_logger()
    outcome: dict[str, str] = {}
    for day in days:
        if day in loaded:
            outcome[day.isoformat()] = "skipped"
            logger.info("%s already loaded: skipped (force=True reloads it)", day)
            continue
        state = user_metrics_pipeline(
            api_url=api_url,
            records=records,
            page_size=page_size,
            run_date=day,
            seed=seed,
            locale=locale,
            return_state=True,
        )
        outcome[day.isoformat()] = "loaded" if state.is_completed() else "failed"
    failed = [d for d, o in outcome.items() if o == "failed"]
    if failed:
        raise PipelineError(f"backfill failed for {len(failed)} date(s): {', '.join(failed)}")
    return outcome


def _preflight(args: argparse.Namespace) -> dict[str, Any]:
    """Check every input before Prefect starts, any request is made or anything is written."""
    settings = get_settings()
    params: dict[str, Any] = {
        "api_url": args.api_url,
        "records": args.records,
        "page_size": args.page_size,
        "seed": args.seed,
        "locale": args.locale,
    }
    if args.backfill:
        days = date_range(args.start_date, args.end_date, settings.backfill_max_days)
        _checked_config(settings, **params, run_date=days[0])
        params.update(start_date=days[0], end_date=days[-1], force=args.force)
    else:
        params["run_date"] = _checked_config(settings, **params, run_date=args.run_date).run_date
    return params


@contextmanager
def startup_budget() -> Iterator[int]:
    """Give Prefect's temporary API server STARTUP_BUDGET_SECONDS, unless the user set it."""
    from prefect.settings import (
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    if os.environ.get(STARTUP_BUDGET_ENV):
        yield PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        return
    with temporary_settings(
        {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: STARTUP_BUDGET_SECONDS}
    ):
        yield STARTUP_BUDGET_SECONDS


def outside_flow_error(exc: BaseException, budget: int) -> str:
    """One line for a failure before or around the flow run (no traceback, no values)."""
    if "ephemeral Prefect API server" in str(exc):
        return (
            f"Prefect's temporary API server did not start within {budget} s: raise "
            f"{STARTUP_BUDGET_ENV}, or run one server for every run (`make serve`, or "
            "PREFECT_API_URL pointing at a running server)"
        )
    return f"{failure_text(exc)} (before the flow run could record it)"


def run_check() -> int:
    """`--check`: repair what killed runs left; exit 1 if a date still needs a rerun."""
    settings = get_settings()
    with open_db(settings.duckdb_path, settings.duckdb_lock_timeout_seconds) as con:
        migrate(con)
        findings = check(con, settings.data_lake_dir)
    for finding in findings:
        print(finding.line())
    left = [f for f in findings if not f.repaired]
    print(
        f"check: {len(findings)} finding(s), {len(findings) - len(left)} repaired, {len(left)} left"
    )
    return 1 if left else 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit 0 on success, 2 on bad input, 1 on a failed run; errors in one line.

    No traceback reaches the user: every failure, inside the flow run or around it, is one
    `error: ...` line naming the cause and what to do.
    """
    args = parse_args(argv, user_metrics_pipeline.__doc__)
    one_line_console()  # Prefect prints a failed run's traceback; the UI keeps it, not the terminal
    try:
        if args.check:
            return run_check()
        params = _preflight(args)
    except ValidationError as exc:  # pydantic: a bad environment value
        print(f"error: {settings_error_line(exc)}", file=sys.stderr)
        return 2
    except (InputError, RuntimeError, ValueError) as exc:
        # Nothing has been fetched yet: the message is about the user's own input.
        lines = str(exc).strip().splitlines()
        print(f"error: {redact(lines[0] if lines else type(exc).__name__)}", file=sys.stderr)
        return 2
    flow_fn = user_metrics_backfill if args.backfill else user_metrics_pipeline
    budget = STARTUP_BUDGET_SECONDS
    try:
        with startup_budget() as budget:
            state = flow_fn(**params, return_state=True)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"error: {outside_flow_error(exc, budget)}", file=sys.stderr)
        return 1
    if not state.is_completed():
        exc = state.result(raise_on_failure=False)
        text = failure_text(exc) if isinstance(exc, BaseException) else redact(str(state.message))
        print(f"error: {text}", file=sys.stderr)
        return 1
    if args.backfill:
        print_backfill(state.result())
    else:
        print_summary(state.result(), ARTIFACTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
