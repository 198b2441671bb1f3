"""The stages of one pipeline run, wired in order; the work itself lives in tasks/."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.futures import PrefectFuture
from prefect.logging import get_logger

from tasks.drift import accepts, compare_signatures, drift_markdown, enforce_policy
from tasks.lake import AtomicParquetWriter, quarantine_path, raw_writer
from tasks.plan import group_ranges, plan_pages, range_count
from tasks.privacy_report import (
    privacy_markdown,
    privacy_run_columns,
    publish_privacy_report,
)
from tasks.run_config import RunConfig
from tasks.runs import failure_markdown, kept_outputs, one_line, record_end
from tasks.settings import get_settings
from tasks.steps import (
    DRIFT_ARTIFACT_KEY,
    FAILURE_ARTIFACT_KEY,
    VALIDATION_ARTIFACT_KEY,
    Generalized,
    MaskedRange,
    fetch_page_range,
    generalize_persons,
    load_persons,
    mask_page_range,
    protect_privacy,
    publish_user_metrics,
    publish_validation,
    scan_for_leaks,
    validate_analytical_batch,
    validate_masked_batch,
)
from tasks.validate import ValidationError as BatchValidationError
from tasks.validate import quarantine

PROGRESS_SECONDS = 1.0


def ingest(
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
    metrics["_secrets"] = secrets = []  # hashes of the raw values, for the leak scan
    metrics.update(pages=0, retries=0, seconds_fetch=0.0, seconds_mask=0.0, seconds_lake=0.0)
    metrics["seconds_leak_hash"] = 0.0
    updated = time.monotonic()
    for fetch, mask in zip(fetched, masked, strict=True):
        # A failed fetch leaves its mask task never run: surface the fetch's own error.
        fetch.wait()
        if fetch.state.is_failed():
            fetch.result()
        part = mask.result()
        table = part.take_table()
        started = time.perf_counter()
        writer.write(table)
        metrics["seconds_lake"] += time.perf_counter() - started
        tables.append(table)
        secrets.append(part.secrets)
        signatures |= part.signatures
        metrics["pages"] += part.pages
        metrics["retries"] += part.retries
        metrics["seconds_fetch"] += part.seconds_fetch
        metrics["seconds_mask"] += part.seconds_mask
        metrics["seconds_leak_hash"] += part.seconds_hash
        # At most one update a second (each is a call to the Prefect API), and always the last.
        if metrics["pages"] == total_pages or time.monotonic() - updated >= PROGRESS_SECONDS:
            update_progress_artifact(progress, progress=100.0 * metrics["pages"] / total_pages)
            updated = time.monotonic()
        logger.info(
            "pages %d/%d done (%d records, %d retries so far)",
            metrics["pages"],
            total_pages,
            writer.rows,
            metrics["retries"],
        )
    metrics.update(records_fetched=writer.rows, source_schema=" | ".join(sorted(signatures)))
    return pa.concat_tables(tables)


def validate_batch(cfg: RunConfig, batch: pa.Table, metrics: dict[str, Any], k: int) -> Generalized:
    """Both GX suites; on failure the masked batch goes to quarantine and the run stops here."""
    started = time.perf_counter()
    summaries = [validate_masked_batch(batch, cfg.records)]
    generalized = None
    if summaries[0].success:
        # generalize refuses batches the raw suite rejects (e.g. null keys), so only run it after.
        t0 = time.perf_counter()
        generalized = generalize_persons(batch, cfg.run_date, k)
        metrics["seconds_generalize"] = time.perf_counter() - t0
        metrics["domains_collapsed"] = generalized.domains_collapsed
        metrics["records_domain_collapsed"] = generalized.records_collapsed
        summaries.append(validate_analytical_batch(generalized.table, cfg.records))
    metrics["_gx_rows"] = publish_validation(summaries, cfg.run_date)
    metrics["seconds_validate"] = (
        time.perf_counter() - started - metrics.get("seconds_generalize", 0.0)
    )
    failed = [s for s in summaries if not s.success]
    if failed or generalized is None:
        path = quarantine(batch, cfg.lake_dir, cfg.run_date)
        get_run_logger().error("batch failed validation; quarantined at %s", path)
        raise BatchValidationError(failed[0])
    return generalized


def check_drift(
    cfg: RunConfig, previous: str | None, metrics: dict[str, Any], policy: str
) -> str | None:
    """Compare the source's shape with the last successful run's; report, then apply the policy."""
    change = compare_signatures(previous, metrics["source_schema"])
    if change is None:
        return None
    metrics["schema_change"] = change.describe()
    get_run_logger().warning("source schema changed: %s", change.describe())
    markdown = drift_markdown(change, policy, accepts(change, policy))
    create_markdown_artifact(
        markdown=markdown,
        key=DRIFT_ARTIFACT_KEY,
        description=f"Source schema drift detected on run date {cfg.run_date}.",
    )
    enforce_policy(change, policy)
    return markdown


def run_stages(
    cfg: RunConfig,
    run_id: str,
    previous_schema: str | None,
    metrics: dict[str, Any],
    log_lines: list[str],
) -> dict[str, Any]:
    """Fetch -> mask -> validate -> lake -> DuckDB -> privacy -> reports -> leak scan."""
    logger = get_run_logger()
    settings = get_settings()
    k = settings.privacy_k
    pages = plan_pages(cfg.records, cfg.page_size, cfg.run_seed)
    fetch_tasks = range_count(len(pages), cfg.fetch.concurrency, cfg.max_fetch_tasks)
    ranges = group_ranges(pages, fetch_tasks)
    logger.info(
        "run date %s: %d records in %d pages of <= %d, %d fetch tasks, from %s",
        cfg.run_date,
        cfg.records,
        len(pages),
        cfg.page_size,
        len(ranges),
        cfg.api_url,
    )
    enter_stage(metrics, "fetch")
    fetched, masked = [], []
    for page_range in ranges:
        # Each mask task is submitted right behind its fetch: the task runner starts tasks in
        # submission order, so a range is masked (and its raw rows dropped) as soon as it lands.
        # Mapping all fetches first would hold every raw row of the run until the last fetch.
        fetch = fetch_page_range.submit(cfg.fetch, page_range)
        fetched.append(fetch)
        masked.append(mask_page_range.submit(fetch, cfg.run_date))
    lake_metadata = {"pii_hash_key_id": metrics["hash_key_id"], "run_date": str(cfg.run_date)}
    with raw_writer(cfg.lake_dir, cfg.run_date, lake_metadata) as writer:
        batch = ingest(cfg, fetched, masked, writer, metrics, len(pages))
        enter_stage(metrics, "schema-drift")
        drift_text = check_drift(cfg, previous_schema, metrics, settings.schema_drift_policy)
        enter_stage(metrics, "validate")
        analytical = validate_batch(cfg, batch, metrics, k).table
        enter_stage(metrics, "lake")
        started = time.perf_counter()
        lake_file = writer.commit()
        metrics["seconds_lake"] += time.perf_counter() - started
    del batch  # the masked batch is on disk now; keep memory for the load
    enter_stage(metrics, "load")
    started = time.perf_counter()
    metrics["records_loaded"] = load_persons(cfg.duckdb_path, analytical, cfg.run_date, run_id)
    metrics["seconds_load"] = time.perf_counter() - started
    enter_stage(metrics, "privacy")
    started = time.perf_counter()
    protected = protect_privacy(
        cfg.duckdb_path,
        cfg.lake_dir,
        analytical,
        cfg.run_date,
        run_id,
        k,
        settings.quasi_identifiers,
    )
    metrics.update(
        privacy_run_columns(protected.metrics, protected.extract, metrics["domains_collapsed"])
    )
    metrics["seconds_privacy"] = time.perf_counter() - started
    del analytical  # in DuckDB and summarized now; the leak scan reads what was written
    enter_stage(metrics, "reports")
    started = time.perf_counter()
    published = publish_user_metrics(cfg.duckdb_path, cfg.run_date, cfg.records, k)
    metrics["seconds_reports"] = time.perf_counter() - started
    metrics["seconds_charts"] = published.seconds_charts
    enter_stage(metrics, "leak-scan")
    started = time.perf_counter()
    quarantined = quarantine_path(cfg.lake_dir, cfg.run_date)
    texts = {
        f"artifact {key}": text
        for key, text in {**published.contents, DRIFT_ARTIFACT_KEY: drift_text}.items()
        if isinstance(text, str)
    }
    rows = {
        f"artifact {key}": value
        for key, value in published.contents.items()
        if isinstance(value, list)
    }
    rows[f"artifact {VALIDATION_ARTIFACT_KEY} (GX results)"] = metrics.pop("_gx_rows")
    scan = scan_for_leaks(
        metrics.pop("_secrets"),
        cfg.run_date,
        [lake_file, protected.extract_file, quarantined],
        cfg.duckdb_path,
        texts,
        rows,
        log_lines,
    )
    markdown = privacy_markdown(
        protected.metrics,
        protected.extract,
        metrics["domains_collapsed"],
        scan,
        run_date=cfg.run_date,
        records_collapsed=metrics.get("records_domain_collapsed"),
    )
    metrics.update(scan.as_run_columns())
    metrics["seconds_leak_scan"] = time.perf_counter() - started
    publish_privacy_report(markdown, cfg.run_date)
    logger.info(
        "privacy: k_min %d (table) / %d (extract, k=%d); leak scan %d outputs, %d hits",
        protected.metrics.k_min,
        protected.extract.k_min,
        k,
        len(scan.outputs_scanned),
        scan.hit_count,
    )
    scan.raise_if_leaked()
    return {
        "lake_file": str(lake_file),
        "extract_file": str(protected.extract_file),
        "answers": published.answers,
    }


def enter_stage(metrics: dict[str, Any], stage: str) -> None:
    """Record the stage the run is in (failure reports name it) and start it with free memory."""
    # Arrow's allocators keep freed pages for reuse (mimalloc for good, jemalloc for a while):
    # without handing them back, a stage's transient peak is carried into the next.
    pa.default_memory_pool().release_unused()
    metrics["stage"] = stage


def report_failure(
    cfg: RunConfig | None, run_id: str, exc: BaseException, metrics: dict[str, Any]
) -> None:
    """Record the failed run (pipeline_runs + a `run-failure` artifact), never masking `exc`."""
    settings = get_settings()
    stage = metrics.get("stage", "start")
    kept: dict[str, Any] = {}
    try:
        if cfg is not None and stage != "start":
            record_end(
                cfg,
                run_id,
                "failed",
                {**metrics, "error": one_line(exc), "failed_stage": stage},
                settings.duckdb_lock_timeout_seconds,
            )
        if cfg is not None:
            kept = kept_outputs(cfg, settings.duckdb_lock_timeout_seconds)
    finally:
        create_markdown_artifact(
            markdown=failure_markdown(cfg.run_date if cfg else None, stage, one_line(exc), kept),
            key=FAILURE_ARTIFACT_KEY,
            description="Why the last run failed and what it left in place.",
        )


def log_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """on_failure hook: one line for whoever watches the worker's log."""
    get_logger("flows.user_metrics").error(
        "flow run %s failed: %s (see the run-failure artifact)", flow_run.name, state.message
    )
