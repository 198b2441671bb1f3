"""The `user-metrics-pipeline` flow: wiring and typed parameters only; the work lives in tasks/.

CLI: python -m flows.user_metrics --api-url URL --records N --page-size P --run-date YYYY-MM-DD
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import uuid
from typing import Any

import pyarrow as pa
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.lake import AtomicParquetWriter, raw_writer
from tasks.load import connect, finish_run, migrate, start_run
from tasks.params import InputError, check_reachable
from tasks.plan import group_ranges, plan_pages
from tasks.publish import ARTIFACT_KEYS
from tasks.run_config import RunConfig, resolve_run_config
from tasks.secrets import key_id
from tasks.settings import get_settings
from tasks.steps import (
    VALIDATION_ARTIFACT_KEY,
    MaskedRange,
    fetch_page_range,
    generalize_persons,
    hash_key,
    load_persons,
    mask_page_range,
    publish_user_metrics,
    publish_validation,
    validate_analytical_batch,
    validate_masked_batch,
)
from tasks.validate import ValidationError, quarantine

FLOW_NAME = "user-metrics-pipeline"
ARTIFACTS = (*ARTIFACT_KEYS, VALIDATION_ARTIFACT_KEY)


def _ingest(
    cfg: RunConfig,
    fetched: list[PrefectFuture[Any]],
    masked: list[PrefectFuture[MaskedRange]],
    writer: AtomicParquetWriter,
    metrics: dict[str, Any],
    total_pages: int,
) -> pa.Table:
    """Stream masked ranges, in page order, into the lake writer; report progress as pages land."""
    logger = get_run_logger()
    progress = create_progress_artifact(
        progress=0.0, description=f"Pages fetched and masked for run date {cfg.run_date}"
    )
    tables, signatures = [], set()
    metrics.update(pages=0, retries=0, seconds_fetch=0.0, seconds_mask=0.0, seconds_lake=0.0)
    for fetch, mask in zip(fetched, masked, strict=True):
        # A failed fetch leaves its mask task never run: surface the fetch's own error.
        fetch.wait()
        if fetch.state.is_failed():
            fetch.result()
        part = mask.result()
        started = time.perf_counter()
        writer.write(part.table)
        metrics["seconds_lake"] += time.perf_counter() - started
        tables.append(part.table)
        signatures |= part.signatures
        metrics["pages"] += part.pages
        metrics["retries"] += part.retries
        metrics["seconds_fetch"] += part.seconds_fetch
        metrics["seconds_mask"] += part.seconds_mask
        update_progress_artifact(progress, progress=100.0 * metrics["pages"] / total_pages)
        logger.info(
            "pages %d/%d done (%d records, %d retries so far)",
            metrics["pages"],
            total_pages,
            writer.rows,
            metrics["retries"],
        )
    metrics.update(records_fetched=writer.rows, source_schema=" | ".join(sorted(signatures)))
    return pa.concat_tables(tables)


def _validate(cfg: RunConfig, batch: pa.Table, metrics: dict[str, Any]) -> pa.Table:
    """Both GX suites; on failure the masked batch goes to quarantine and the run stops here."""
    started = time.perf_counter()
    summaries = [validate_masked_batch(batch, cfg.records)]
    analytical = None
    if summaries[0].success:
        # generalize refuses batches the raw suite rejects (e.g. null keys), so only run it after.
        t0 = time.perf_counter()
        analytical = generalize_persons(batch, cfg.run_date)
        metrics["seconds_generalize"] = time.perf_counter() - t0
        summaries.append(validate_analytical_batch(analytical, cfg.records))
    publish_validation(summaries, cfg.run_date)
    metrics["seconds_validate"] = (
        time.perf_counter() - started - metrics.get("seconds_generalize", 0.0)
    )
    failed = [s for s in summaries if not s.success]
    if failed or analytical is None:
        path = quarantine(batch, cfg.lake_dir, cfg.run_date)
        get_run_logger().error("batch failed validation; quarantined at %s", path)
        raise ValidationError(failed[0])
    return analytical


def _run(cfg: RunConfig, run_id: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Fetch -> mask -> validate -> lake -> DuckDB -> reports, recording metrics as it goes."""
    logger = get_run_logger()
    pages = plan_pages(cfg.records, cfg.page_size, cfg.run_seed)
    ranges = group_ranges(pages, cfg.max_fetch_tasks)
    logger.info(
        "run date %s: %d records in %d pages of <= %d, %d fetch tasks, from %s",
        cfg.run_date,
        cfg.records,
        len(pages),
        cfg.page_size,
        len(ranges),
        cfg.api_url,
    )
    fetched = fetch_page_range.map(unmapped(cfg.fetch), ranges)
    masked = mask_page_range.map(fetched, unmapped(cfg.run_date))
    lake_metadata = {"pii_hash_key_id": metrics["hash_key_id"], "run_date": str(cfg.run_date)}
    with raw_writer(cfg.lake_dir, cfg.run_date, lake_metadata) as writer:
        batch = _ingest(cfg, list(fetched), list(masked), writer, metrics, len(pages))
        analytical = _validate(cfg, batch, metrics)
        started = time.perf_counter()
        lake_file = writer.commit()
        metrics["seconds_lake"] += time.perf_counter() - started
    del batch  # the masked batch is on disk now; keep memory for the load
    started = time.perf_counter()
    metrics["records_loaded"] = load_persons(cfg.duckdb_path, analytical, cfg.run_date, run_id)
    metrics["seconds_load"] = time.perf_counter() - started
    started = time.perf_counter()
    answers = publish_user_metrics(cfg.duckdb_path, cfg.run_date, cfg.records)
    metrics["seconds_reports"] = time.perf_counter() - started
    return {"lake_file": str(lake_file), "answers": answers}


def _record_start(cfg: RunConfig, run_id: str) -> None:
    with connect(cfg.duckdb_path) as con:
        migrate(con)
        start_run(con, run_id, cfg.run_date, cfg.records)


def _record_end(cfg: RunConfig, run_id: str, status: str, **metrics: Any) -> None:
    with connect(cfg.duckdb_path) as con:
        finish_run(con, run_id, status, **metrics)


@flow(
    name=FLOW_NAME,
    # Fetch concurrency is bounded by the HTTP layer's gate; threads just keep tasks flowing.
    task_runner=ThreadPoolTaskRunner(max_workers=16),
    persist_result=False,
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
    cfg = resolve_run_config(
        get_settings(),
        api_url=api_url,
        records=records,
        page_size=page_size,
        run_date=run_date,
        seed=seed,
        locale=locale,
    )
    check_reachable(cfg.api_url)
    metrics: dict[str, Any] = {"hash_key_id": key_id(hash_key())}  # no key: fails here
    run_id = str(flow_run.id or uuid.uuid4())
    _record_start(cfg, run_id)
    try:
        outcome = _run(cfg, run_id, metrics)
    except BaseException as exc:
        metrics["seconds_total"] = time.perf_counter() - started
        _record_end(cfg, run_id, "failed", error=_one_line(exc), **_columns(metrics))
        raise
    metrics["seconds_total"] = time.perf_counter() - started
    _record_end(cfg, run_id, "completed", **_columns(metrics))
    get_run_logger().info(
        "loaded %d records for %s; lake file %s; %.1fs",
        metrics["records_loaded"],
        cfg.run_date,
        outcome["lake_file"],
        metrics["seconds_total"],
    )
    return {
        **metrics,
        **outcome,
        "flow_run_id": run_id,
        "run_date": cfg.run_date.isoformat(),
        "records_requested": cfg.records,
        "duckdb_path": str(cfg.duckdb_path),
    }


_RUN_COLUMNS = (
    "records_fetched",
    "records_loaded",
    "pages",
    "retries",
    "seconds_fetch",
    "seconds_mask",
    "seconds_lake",
    "seconds_generalize",
    "seconds_validate",
    "seconds_load",
    "seconds_reports",
    "seconds_total",
    "source_schema",
    "hash_key_id",
)


def _columns(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k in _RUN_COLUMNS}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flows.user_metrics", description=user_metrics_pipeline.__doc__
    )
    parser.add_argument("--api-url", help="Faker API base URL (default: FAKER_API_URL)")
    parser.add_argument("--records", type=int, help="records to fetch (default: FAKER_RECORDS)")
    parser.add_argument("--page-size", type=int, help="records per request, 1..1000")
    parser.add_argument("--run-date", help="YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--seed", type=int, help="run seed (default: derived from the run date)")
    parser.add_argument("--locale", help="Faker locale (default: FAKER_LOCALE)")
    return parser.parse_args(argv)


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"Run date      {summary['run_date']}")
    print(f"Lake file     {summary['lake_file']}")
    print(f"DuckDB        {summary['duckdb_path']} ({summary['records_loaded']:,} rows loaded)")
    print(
        f"Records       {summary['records_fetched']:,} of {summary['records_requested']:,} "
        f"in {summary['pages']} pages, {summary['retries']} retries"
    )
    print(f"Seconds       {summary['seconds_total']:.1f}")
    print("Answers")
    for answer in summary["answers"]:
        print(f"  - {answer}")
    print("Artifacts     " + ", ".join(ARTIFACTS))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit 0 on success, else a one-line error naming the cause."""
    args = _parse_args(argv)
    params = {
        "api_url": args.api_url,
        "records": args.records,
        "page_size": args.page_size,
        "run_date": args.run_date,
        "seed": args.seed,
        "locale": args.locale,
    }
    try:
        # Bad input fails here, before Prefect starts, any request is made or anything is written.
        cfg = resolve_run_config(get_settings(), **params)
        check_reachable(cfg.api_url)
        hash_key()
    except (InputError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    params["run_date"] = cfg.run_date
    state = user_metrics_pipeline(**params, return_state=True)
    if not state.is_completed():
        exc = state.result(raise_on_failure=False)
        print(f"error: {exc if isinstance(exc, BaseException) else state.message}", file=sys.stderr)
        return 1
    _print_summary(state.result())
    return 0


if __name__ == "__main__":
    sys.exit(main())
