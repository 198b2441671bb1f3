"""The `user-metrics-pipeline` and `user-metrics-backfill` flows, and the CLI.

Wiring and typed parameters only: the stages are in flows/stages.py, the work in tasks/.

CLI: python -m flows.user_metrics --api-url URL --records N --page-size P --run-date YYYY-MM-DD
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import ValidationError

from flows.cli import parse_args, print_backfill, print_summary
from flows.runners import runner_from_env
from flows.stages import log_failure, report_failure, run_stages
from tasks.allocator import use_returning_pool
from tasks.charts import prestart as prestart_charts
from tasks.load import completed_dates, migrate, open_db
from tasks.logcapture import capture_logs
from tasks.params import InputError, check_reachable, date_range, settings_error_line
from tasks.privacy_report import PRIVACY_REPORT_KEY
from tasks.publish import ARTIFACT_KEYS
from tasks.run_config import RunConfig, resolve_run_config
from tasks.runs import record_end, record_start
from tasks.secrets import key_id
from tasks.settings import Settings, get_settings
from tasks.steps import VALIDATION_ARTIFACT_KEY, hash_key

FLOW_NAME = "user-metrics-pipeline"
BACKFILL_FLOW_NAME = "user-metrics-backfill"
ARTIFACTS = (*ARTIFACT_KEYS, VALIDATION_ARTIFACT_KEY, PRIVACY_REPORT_KEY)


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
    run_id = str(flow_run.id or uuid.uuid4())
    metrics: dict[str, Any] = {}
    cfg: RunConfig | None = None
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
        metrics["hash_key_id"] = key_id(hash_key())
        previous_schema = record_start(cfg, run_id, settings.duckdb_lock_timeout_seconds)
        metrics["stage"] = "plan"
        # Chromium (~2 s to start) comes up while pages are fetched; the report's charts render
        # in it, and it is closed however the run ends.
        with capture_logs() as log_lines, prestart_charts():
            outcome = run_stages(cfg, run_id, previous_schema, metrics, log_lines)
    except BaseException as exc:
        metrics["seconds_total"] = time.perf_counter() - started
        metrics.pop("_secrets", None)  # the hashes are of no use once the run is over
        report_failure(cfg, run_id, exc, metrics)
        raise
    metrics["seconds_total"] = time.perf_counter() - started
    record_end(cfg, run_id, "completed", metrics, settings.duckdb_lock_timeout_seconds)
    get_run_logger().info(
        "loaded %d records for %s; lake file %s; %.1fs",
        metrics["records_loaded"],
        cfg.run_date,
        outcome["lake_file"],
        metrics["seconds_total"],
    )
    return {
        **{k: v for k, v in metrics.items() if not k.startswith("_") and k != "stage"},
        **outcome,
        "flow_run_id": run_id,
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
        raise RuntimeError(f"backfill failed for {len(failed)} date(s): {', '.join(failed)}")
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


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit 0 on success, 2 on bad input, 1 on a failed run; errors in one line."""
    args = parse_args(argv, user_metrics_pipeline.__doc__)
    try:
        params = _preflight(args)
    except ValidationError as exc:  # pydantic: a bad environment value
        print(f"error: {settings_error_line(exc)}", file=sys.stderr)
        return 2
    except (InputError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    flow_fn = user_metrics_backfill if args.backfill else user_metrics_pipeline
    state = flow_fn(**params, return_state=True)
    if not state.is_completed():
        exc = state.result(raise_on_failure=False)
        print(f"error: {exc if isinstance(exc, BaseException) else state.message}", file=sys.stderr)
        return 1
    if args.backfill:
        print_backfill(state.result())
    else:
        print_summary(state.result(), ARTIFACTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
