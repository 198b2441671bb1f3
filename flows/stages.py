"""The stages of one pipeline run, wired in order; the work itself lives in tasks/.

A run stages every output where no reader sees it (temp files beside their targets, DuckDB
writes in one open transaction, artifacts composed in memory), verifies what it staged, and
only then commits (DuckDB, then the file renames) and publishes the artifacts. Until the
commit, the date's lake files, DuckDB rows and latest artifacts are the previous run's.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture
from prefect.logging import get_logger

from tasks.drift import accepts, compare_signatures, drift_markdown, enforce_policy
from tasks.errors import PipelineError, failure_text, redact, value_free
from tasks.lake import AtomicParquetWriter, quarantine_path, raw_writer
from tasks.leak_scan import LeakScanner, SecretHashes
from tasks.load import DatabaseBusyError, finish_run, open_db, run_columns, utc_now
from tasks.plan import PageRange, group_ranges, plan_pages, range_count
from tasks.privacy_report import privacy_artifact, privacy_markdown, privacy_run_columns
from tasks.publish import Artifact, create_artifacts
from tasks.run_config import RunConfig
from tasks.runs import failure_markdown, kept_columns, read_back, record_end
from tasks.settings import get_settings
from tasks.steps import (
    DRIFT_ARTIFACT_KEY,
    FAILURE_ARTIFACT_KEY,
    MaskedRange,
    compose_user_metrics,
    fetch_page_range,
    generalize_persons,
    load_persons,
    mask_page_range,
    protect_privacy,
    scan_for_leaks,
    validate_analytical_batch,
    validate_masked_batch,
    validation_artifact,
)
from tasks.validate import ValidationError as BatchValidationError
from tasks.validate import quarantine

PROGRESS_SECONDS = 1.0
# How long a failure report waits for the DuckDB file: briefly when the lock is what failed.
READ_BACK_SECONDS = 30.0
BUSY_WAIT_SECONDS = 5.0


@dataclass
class RunRecord:
    """What a run has done so far: the stage it is in, its figures, what it published."""

    run_id: str
    stage: str = "start"
    figures: dict[str, Any] = field(default_factory=dict)  # pipeline_runs columns
    published: list[str] = field(default_factory=list)  # artifact keys, as created
    details: list[str] = field(default_factory=list)  # value-free lines for the failure report
    secrets: list[SecretHashes] = field(default_factory=list)  # hashes of the batch's raw values
    _scanner: LeakScanner | None = None

    @contextmanager
    def entered(self, stage: str) -> Iterator[None]:
        """Run a stage: the failure report names it, and its seconds add up in the figures."""
        # Arrow's allocators keep freed pages for reuse (mimalloc for good, jemalloc for a
        # while): without handing them back, a stage's transient peak is carried into the next.
        pa.default_memory_pool().release_unused()
        self.stage = stage
        with self.timed(stage):
            yield

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the block's seconds to `seconds_<name>`."""
        key = f"seconds_{name.replace('-', '_')}"
        started = time.perf_counter()
        try:
            yield
        finally:
            self.figures[key] = self.figures.get(key, 0.0) + time.perf_counter() - started

    def scanner(self, run_date: dt.date) -> LeakScanner:
        """The leak scanner over this run's raw-value hashes (built once, when first needed)."""
        if self._scanner is None:
            self._scanner = LeakScanner(self.secrets, run_date)
            self.secrets = []  # merged into the scanner's index; no need to hold them twice
        return self._scanner

    def has_secrets(self) -> bool:
        """Whether any raw-value hashes were taken (the run got as far as masking)."""
        return self._scanner is not None or bool(self.secrets)


def plan(cfg: RunConfig) -> tuple[int, list[PageRange]]:
    """(pages, page ranges) of the run: one fetch task per range."""
    pages = plan_pages(cfg.records, cfg.page_size, cfg.run_seed)
    fetch_tasks = range_count(len(pages), cfg.fetch.concurrency, cfg.max_fetch_tasks)
    ranges = group_ranges(pages, fetch_tasks)
    get_run_logger().info(
        "run date %s: %d records in %d pages of <= %d, %d fetch tasks, from %s",
        cfg.run_date,
        cfg.records,
        len(pages),
        cfg.page_size,
        len(ranges),
        cfg.api_url,
    )
    return len(pages), ranges


def submit_fetches(
    cfg: RunConfig, ranges: list[PageRange]
) -> list[tuple[PrefectFuture[Any], PrefectFuture[MaskedRange]]]:
    """A fetch task per range, each with its mask task right behind it."""
    # The task runner starts tasks in submission order, so a range is masked (and its raw rows
    # dropped) as soon as it lands. Mapping all fetches first would hold every raw row of the run
    # until the last fetch.
    submitted = []
    for page_range in ranges:
        fetch = fetch_page_range.submit(cfg.fetch, page_range)
        submitted.append((fetch, mask_page_range.submit(fetch, cfg.run_date)))
    return submitted


def ingest(
    cfg: RunConfig,
    submitted: list[tuple[PrefectFuture[Any], PrefectFuture[MaskedRange]]],
    writer: AtomicParquetWriter,
    run: RunRecord,
    total_pages: int,
) -> pa.Table:
    """Stream masked ranges, in page order, into the staged lake file; report progress."""
    logger = get_run_logger()
    progress = create_progress_artifact(
        progress=0.0, description=f"Pages fetched and masked for run date {cfg.run_date}"
    )
    tables, signatures = [], set()
    counts = dict.fromkeys(("pages", "retries"), 0)
    updated = time.monotonic()
    for fetch, mask in submitted:
        # A failed fetch leaves its mask task never run: surface the fetch's own error.
        fetch.wait()
        if fetch.state.is_failed():
            fetch.result()
        part = mask.result()
        table = part.take_table()
        with run.timed("lake"):
            writer.write(table)
        tables.append(table)
        run.secrets.append(part.secrets)
        signatures |= part.signatures
        counts["pages"] += part.pages
        counts["retries"] += part.retries
        # Summed over mask task runs, which overlap with fetching and with each other.
        for key, seconds in (
            ("seconds_mask", part.seconds_mask),
            ("seconds_leak_hash", part.seconds_hash),
        ):
            run.figures[key] = run.figures.get(key, 0.0) + seconds
        # At most one update a second (each is a call to the Prefect API), and always the last.
        if counts["pages"] == total_pages or time.monotonic() - updated >= PROGRESS_SECONDS:
            update_progress_artifact(progress, progress=100.0 * counts["pages"] / total_pages)
            updated = time.monotonic()
        logger.info(
            "pages %d/%d done (%d records, %d retries so far)",
            counts["pages"],
            total_pages,
            writer.rows,
            counts["retries"],
        )
    run.figures.update(
        counts, records_fetched=writer.rows, source_schema=" | ".join(sorted(signatures))
    )
    return pa.concat_tables(tables)


def check_drift(cfg: RunConfig, previous: str | None, run: RunRecord) -> list[Artifact]:
    """Compare the source's shape with the last committed run's; compose the report, apply the
    policy (a stopped run reports the change in its failure report instead)."""
    policy = get_settings().schema_drift_policy
    change = compare_signatures(previous, run.figures["source_schema"])
    if change is None:
        return []
    run.figures["schema_change"] = change.describe()
    run.details.append(f"Source schema change: {change.describe()}")
    get_run_logger().warning("source schema changed: %s", change.describe())
    markdown = drift_markdown(change, policy, accepts(change, policy))
    enforce_policy(change, policy)
    description = f"Source schema drift detected on run date {cfg.run_date}."
    return [Artifact(DRIFT_ARTIFACT_KEY, description, markdown=markdown)]


def validate_batch(
    cfg: RunConfig, batch: pa.Table, run: RunRecord, k: int
) -> tuple[pa.Table, Artifact]:
    """Both GX suites and the generalization between them; a failing batch is quarantined."""
    summaries = [validate_masked_batch(batch, cfg.records)]
    analytical = None
    if summaries[0].success:
        # generalize refuses batches the raw suite rejects (e.g. null keys), so only run it after.
        with run.timed("generalize"):
            generalized = generalize_persons(batch, cfg.run_date, k)
        run.figures["domains_collapsed"] = generalized.domains_collapsed
        run.figures["records_domain_collapsed"] = generalized.records_collapsed
        analytical = generalized.table
        summaries.append(validate_analytical_batch(analytical, cfg.records))
    failed = [s for s in summaries if not s.success]
    if failed or analytical is None:
        run.details += [f"Validation: {s.failures_text()}" for s in summaries]
        scanner = run.scanner(cfg.run_date)
        path = quarantine(batch, cfg.lake_dir, cfg.run_date, k, scanner)
        if path is None:
            run.details.append(
                "The batch was not quarantined: after masking it still held raw values "
                f"({', '.join(scanner.report.hit_fields())})."
            )
        get_run_logger().error(
            "batch failed validation; %s", f"quarantined at {path}" if path else "not quarantined"
        )
        raise BatchValidationError(failed[0])
    return analytical, validation_artifact(summaries, cfg.run_date)


@contextmanager
def staging_db(cfg: RunConfig) -> Iterator[duckdb.DuckDBPyConnection]:
    """The DuckDB file under its lock with a transaction open: rolled back unless committed."""
    with open_db(cfg.duckdb_path, get_settings().duckdb_lock_timeout_seconds) as con:
        con.begin()
        try:
            yield con
        finally:
            # After a commit this is a no-op error we ignore; otherwise it drops the staging.
            with suppress(duckdb.Error):
                con.rollback()


def verify(
    cfg: RunConfig,
    run: RunRecord,
    con: duckdb.DuckDBPyConnection,
    files: dict[str, AtomicParquetWriter],
    artifacts: list[Artifact],
    log_lines: list[str],
) -> Any:
    """Check what is staged: row counts, then the leak scan of every staged output."""
    for name, writer in files.items():
        rows = pq.ParquetFile(writer.temp).metadata.num_rows
        if rows != writer.rows:
            raise PipelineError(f"staged {name} holds {rows} rows, {writer.rows} were written")
    if run.figures["records_loaded"] != cfg.records:
        raise PipelineError(
            f"staged {run.figures['records_loaded']} rows in DuckDB, {cfg.records} were requested"
        )
    with run.timed("leak_scan"):
        texts = {f"artifact {a.key}": a.markdown for a in artifacts if a.markdown is not None}
        rows = {f"artifact {a.key}": a.table for a in artifacts if a.table is not None}
        scan = scan_for_leaks(
            run.scanner(cfg.run_date),
            {name: writer.temp for name, writer in files.items()},
            con,
            cfg.run_date,
            texts,
            rows,
            log_lines,
        )
    run.figures.update(scan.as_run_columns())
    if not scan.clean:
        run.details += [
            f"Leak scan hit: {hit.label()}, {hit.count} cell(s) or line(s)" for hit in scan.hits
        ]
    scan.raise_if_leaked()
    return scan


def commit(
    cfg: RunConfig,
    run: RunRecord,
    con: duckdb.DuckDBPyConnection,
    files: dict[str, AtomicParquetWriter],
) -> None:
    """Make the staged outputs the date's: DuckDB first, then the file renames.

    A crash between the two leaves complete staged files that `tasks.recovery.check` rolls
    forward (the DuckDB rows name the run that staged them).
    """
    columns = run_columns(con)
    figures = {k: v for k, v in run.figures.items() if k in columns}
    finish_run(con, run.run_id, "committed", committed_at=utc_now(), **figures)
    con.commit()
    for writer in files.values():
        # From here on a failure must not drop the staged files: they are the committed batch.
        writer.keep = True
    for writer in files.values():
        writer.commit()
    # The date is good now: an older run's quarantined batch no longer describes it.
    quarantine_path(cfg.lake_dir, cfg.run_date).unlink(missing_ok=True)


def run_stages(
    cfg: RunConfig, run: RunRecord, previous_schema: str | None, log_lines: list[str]
) -> dict[str, Any]:
    """Fetch -> mask -> validate -> stage -> verify -> commit -> publish."""
    settings = get_settings()
    k = settings.privacy_k
    with run.entered("plan"):
        total_pages, ranges = plan(cfg)
    metadata = {
        "pii_hash_key_id": run.figures["hash_key_id"],
        "run_date": str(cfg.run_date),
        "flow_run_id": run.run_id,
    }
    with ExitStack() as staged:
        raw = staged.enter_context(raw_writer(cfg.lake_dir, cfg.run_date, metadata, run.run_id))
        with run.entered("fetch"):
            batch = ingest(cfg, submit_fetches(cfg, ranges), raw, run, total_pages)
        with run.entered("schema-drift"):
            artifacts = check_drift(cfg, previous_schema, run)
        with run.entered("validate"):
            analytical, validation = validate_batch(cfg, batch, run, k)
        artifacts.append(validation)
        del batch  # staged in the lake file; keep memory for what follows
        with run.timed("lake"):
            raw.finish()
        con = staged.enter_context(staging_db(cfg))
        with run.entered("load"):
            run.figures["records_loaded"] = load_persons(con, analytical, cfg.run_date, run.run_id)
        with run.entered("privacy"):
            protected = protect_privacy(
                con,
                cfg.lake_dir,
                analytical,
                cfg.run_date,
                run.run_id,
                k,
                settings.quasi_identifiers,
            )
            staged.enter_context(protected.writer)
        collapsed = run.figures["domains_collapsed"]
        run.figures.update(privacy_run_columns(protected.metrics, protected.extract, collapsed))
        del analytical  # staged in DuckDB and summarized; the leak scan reads what was staged
        with run.entered("reports"):
            published = compose_user_metrics(con, cfg.run_date, cfg.records, k)
        run.figures["seconds_charts"] = published.seconds_charts
        artifacts += published.artifacts
        files = {"raw lake file": raw, "shareable extract file": protected.writer}
        with run.entered("verify"):
            scan = verify(cfg, run, con, files, artifacts, log_lines)
            markdown = privacy_markdown(
                protected.metrics,
                protected.extract,
                collapsed,
                scan,
                run_date=cfg.run_date,
                records_collapsed=run.figures.get("records_domain_collapsed"),
            )
            artifacts.append(privacy_artifact(redact(markdown), cfg.run_date))
        with run.entered("commit"):
            commit(cfg, run, con, files)
    get_run_logger().info(
        "committed %d records for %s; privacy: k_min %d (table) / %d (extract, k=%d); "
        "leak scan %d outputs, 0 hits",
        run.figures["records_loaded"],
        cfg.run_date,
        protected.metrics.k_min,
        protected.extract.k_min,
        k,
        len(scan.outputs_scanned),
    )
    with run.entered("publish"):
        create_artifacts(artifacts, run.published)
    return {
        "lake_file": str(raw.target),
        "extract_file": str(protected.writer.target),
        "answers": published.answers,
    }


def report_failure(cfg: RunConfig | None, run: RunRecord, exc: BaseException) -> BaseException:
    """Record the failed run (pipeline_runs + `run-failure`); return the error to raise.

    The returned error holds no source value (`tasks.errors.value_free`), and its line is the
    one recorded. What the date holds is read back from disk; the report never assumes it.
    """
    from prefect.artifacts import create_markdown_artifact

    scanner = run.scanner(cfg.run_date) if cfg is not None and run.has_secrets() else None
    raised = value_free(exc, failure_text(exc, scanner))
    error = failure_text(raised)
    held: dict[str, Any] = {}
    try:
        if cfg is not None:
            # The database may be what failed: wait for it briefly, never a whole lock timeout.
            wait = BUSY_WAIT_SECONDS if isinstance(exc, DatabaseBusyError) else READ_BACK_SECONDS
            wait = min(wait, get_settings().duckdb_lock_timeout_seconds)
            held = read_back(cfg, wait)
            if run.stage != "start":
                figures = {**run.figures, **kept_columns(held), "error": error}
                try:
                    record_end(
                        cfg, run.run_id, "failed", {**figures, "failed_stage": run.stage}, wait
                    )
                except DatabaseBusyError:
                    run.details.append(
                        "The run's pipeline_runs row could not be updated: another run held the "
                        "database; the next run's check marks it abandoned."
                    )
    finally:
        details = [redact(line) for line in run.details]
        create_markdown_artifact(
            markdown=failure_markdown(
                cfg.run_date if cfg else None,
                run.run_id,
                run.stage,
                error,
                held,
                run.published,
                [f"- {line}" for line in details],
            ),
            key=FAILURE_ARTIFACT_KEY,
            description="Why the last run failed and what the date holds now.",
        )
    return raised


def log_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """on_failure hook: one line for whoever watches the worker's log."""
    get_logger("flows.user_metrics").error(
        "flow run %s failed: %s (see the run-failure artifact)", flow_run.name, state.message
    )
