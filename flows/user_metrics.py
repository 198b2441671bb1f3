"""The `user-metrics-pipeline` flow: wiring and typed parameters only; the work lives in tasks/.

CLI: python -m flows.user_metrics --api-url URL --records N --page-size P --run-date YYYY-MM-DD
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Iterable
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.lake import raw_writer
from tasks.params import InputError, check_reachable
from tasks.plan import group_ranges, plan_pages
from tasks.run_config import RunConfig, resolve_run_config
from tasks.secrets import key_id
from tasks.settings import get_settings
from tasks.steps import MaskedRange, fetch_page_range, hash_key, mask_page_range

FLOW_NAME = "user-metrics-pipeline"


def _ingest(
    cfg: RunConfig,
    fetched: Iterable[PrefectFuture[Any]],
    masked: Iterable[PrefectFuture[MaskedRange]],
    total_pages: int,
) -> dict[str, Any]:
    """Stream masked ranges, in page order, into the run date's raw lake file; report progress."""
    logger = get_run_logger()
    progress = create_progress_artifact(
        progress=0.0, description=f"Pages fetched and masked for run date {cfg.run_date}"
    )
    stats = {"pages": 0, "retries": 0, "seconds_fetch": 0.0, "seconds_mask": 0.0}
    signatures: set[str] = set()
    metadata = {"pii_hash_key_id": key_id(hash_key()), "run_date": cfg.run_date.isoformat()}
    lake_seconds = 0.0
    with raw_writer(cfg.lake_dir, cfg.run_date, metadata) as writer:
        for fetch, mask in zip(fetched, masked, strict=True):
            # A failed fetch leaves its mask task never run: surface the fetch's own error.
            fetch.wait()
            if fetch.state.is_failed():
                fetch.result()
            part = mask.result()
            started = time.perf_counter()
            writer.write(part.table)
            lake_seconds += time.perf_counter() - started
            stats["pages"] += part.pages
            stats["retries"] += part.retries
            stats["seconds_fetch"] += part.seconds_fetch
            stats["seconds_mask"] += part.seconds_mask
            signatures |= part.signatures
            update_progress_artifact(progress, progress=100.0 * stats["pages"] / total_pages)
            logger.info(
                "pages %d/%d done (%d records, %d retries so far)",
                stats["pages"],
                total_pages,
                writer.rows,
                stats["retries"],
            )
        started = time.perf_counter()
        path = writer.commit()
        lake_seconds += time.perf_counter() - started
    return {
        **stats,
        "records_fetched": writer.rows,
        "lake_file": str(path),
        "seconds_lake": lake_seconds,
        "source_schema": " | ".join(sorted(signatures)),
    }


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
    """Fetch persons, mask them, and write the run date's masked batch to the lake."""
    started = time.perf_counter()
    logger = get_run_logger()
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
    hash_key()  # a missing key fails here, before any request
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
    summary = _ingest(cfg, fetched, masked, len(pages))
    summary.update(
        run_date=cfg.run_date.isoformat(),
        records_requested=cfg.records,
        seconds_total=time.perf_counter() - started,
    )
    logger.info(
        "wrote %d records to %s (%d pages, %d retries) in %.1fs",
        summary["records_fetched"],
        summary["lake_file"],
        summary["pages"],
        summary["retries"],
        summary["seconds_total"],
    )
    return summary


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
    print(
        f"Records       {summary['records_fetched']:,} of {summary['records_requested']:,} "
        f"in {summary['pages']} pages, {summary['retries']} retries"
    )
    print(f"Seconds       {summary['seconds_total']:.1f}")


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
