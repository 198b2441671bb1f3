"""The steps of one pipeline run, in the order the flow calls them; the work lives in tasks/.

A run stages every output where no reader sees it (temp files beside their targets, DuckDB
writes in one open transaction, artifacts composed in memory), verifies what it staged, and
only then commits (DuckDB, then the file renames) and publishes the artifacts. Until the
commit, the date's lake files, DuckDB rows and latest artifacts are the previous run's.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar
from uuid import UUID

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.logging import get_logger

from flows.leftovers import repair_leftovers
from flows.run_record import RunRecord
from tasks.common.concurrency import server_limit
from tasks.common.errors import PipelineError, display_url, failure_text, redact, value_free
from tasks.common.run_config import RunConfig
from tasks.common.secrets import hash_key
from tasks.ingest import (
    MaskedRange,
    PageRange,
    fetch_and_mask_range_task,
    group_ranges,
    plan_pages,
    range_count,
    range_retry_options,
)
from tasks.ingest.plan import run_seed_for, seed_key
from tasks.privacy import (
    LeakScanReport,
    Protected,
    generalize_persons_task,
    keep_shared_domains,
    protect_privacy_task,
    scan_for_leaks_task,
)
from tasks.quality.drift import accepts, compare_signatures, drift_markdown, enforce_policy
from tasks.quality.gx_suites import remove_files, run_files
from tasks.quality.gx_validation import ValidationSummary
from tasks.quality.validate import (
    ValidationError,
    validate_analytical_task,
    validate_masked_task,
    validation_artifact,
)
from tasks.reporting import (
    DRIFT_ARTIFACT_KEY,
    FAILURE_ARTIFACT_KEY,
    Artifact,
    Composed,
    compose_user_metrics_task,
    create_artifacts,
    failure_markdown,
    privacy_artifact,
    privacy_markdown,
    privacy_run_columns,
)
from tasks.storage import (
    AtomicParquetWriter,
    DatabaseBusyError,
    finish_run,
    in_key_order,
    kept_columns,
    open_db,
    publishes_latest,
    quarantine_path,
    raw_writer,
    read_back,
    record_end,
    record_start,
    run_columns,
    stage_batch_task,
    utc_now,
)
from tasks.storage.events import BatchCommitted, emit_batch_committed
from tasks.storage.quarantine import quarantine

PROGRESS_SECONDS = 1.0
# How long a failure report waits for the DuckDB file: briefly when the lock is what failed.
READ_BACK_SECONDS = 30.0
BUSY_WAIT_SECONDS = 5.0


P = ParamSpec("P")
R = TypeVar("R")


def in_step(
    name: str,
) -> Callable[
    [Callable[Concatenate[RunConfig, RunRecord, P], R]],
    Callable[Concatenate[RunConfig, RunRecord, P], R],
]:
    """Decorator: the function runs as step `name` of its run (`RunRecord.entered`)."""

    def decorate(
        fn: Callable[Concatenate[RunConfig, RunRecord, P], R],
    ) -> Callable[Concatenate[RunConfig, RunRecord, P], R]:
        def in_named_step(
            cfg: RunConfig, run: RunRecord, /, *args: P.args, **kwargs: P.kwargs
        ) -> R:
            with run.entered(name):
                return fn(cfg, run, *args, **kwargs)

        functools.update_wrapper(in_named_step, fn)
        return in_named_step

    return decorate


@dataclass
class Staged:
    """Everything a run has staged so far, none of it visible until `commit`."""

    raw: AtomicParquetWriter
    stack: ExitStack  # drops whatever is staged and not committed when the run ends
    artifacts: list[Artifact] = field(default_factory=list)
    validations: list[ValidationSummary] = field(default_factory=list)
    con: duckdb.DuckDBPyConnection | None = None
    protected: Protected | None = None
    composed: Composed | None = None
    scan: LeakScanReport | None = None
    # Decided at the commit: another run has committed a newer date, so this run's artifacts
    # go under per-date keys and the latest versions of the plain keys stay that date's.
    dated_keys: bool = False

    @property
    def files(self) -> dict[str, AtomicParquetWriter]:
        """The staged lake files, by the name the leak scan reports them under."""
        files = {"raw lake file": self.raw}
        if self.protected is not None:
            files["shareable extract file"] = self.protected.writer
        return files

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The open DuckDB transaction (the run has reached its load)."""
        if self.con is None:
            raise RuntimeError("nothing is staged in DuckDB yet")
        return self.con


def start(cfg: RunConfig, run: RunRecord) -> tuple[RunConfig, str | None]:
    """Migrate, repair what killed runs left, record this run, pick its request budget.

    Returns the run's config (with the shared request budget, if the server has one) and the
    source schema of the last committed run.
    """
    # The DuckDB file's cross-host lock, held from the first time the run opens the file.
    cfg = dataclasses.replace(cfg, duckdb_limit=server_limit(cfg.duckdb_limit_name))
    previous_schema, findings = record_start(cfg, run.run_id, cfg.duckdb_lock_timeout)
    more, notes = repair_leftovers(
        f"the start of run {run.run_id}",
        cfg.duckdb_path,
        run.run_id,
        timeout=cfg.duckdb_lock_timeout,
        limit=cfg.duckdb_limit,
    )
    for line in [finding.line() for finding in findings + more] + notes:
        get_run_logger().warning("check: %s", line)
    shared = shared_rate_limit(cfg)
    if cfg.fetch.requests_per_minute:
        where = f"shared through concurrency limit {shared!r}" if shared else "in this process"
        get_run_logger().info(
            "request budget: %d a minute, %s", cfg.fetch.requests_per_minute, where
        )
    fetch = dataclasses.replace(cfg.fetch, rate_limit_name=shared)
    return dataclasses.replace(cfg, fetch=fetch), previous_schema


def shared_rate_limit(cfg: RunConfig) -> str | None:
    """The Prefect concurrency limit every process draws requests from, if there is one.

    Only a real Prefect server (PREFECT_API_URL, as under `make serve` or a worker) can share a
    budget between processes, and only once the limit exists with a slot decay (`make serve`
    and the compose worker create it from REQUESTS_PER_MINUTE). A temporary server per process
    shares nothing: the in-process limiter applies.
    """
    if cfg.fetch.requests_per_minute <= 0:
        return None
    return server_limit(cfg.rate_limit_name, decaying=True)


@contextmanager
def staged_outputs(cfg: RunConfig, run: RunRecord) -> Iterator[Staged]:
    """Where the run stages its outputs; whatever is not committed is dropped at the end."""
    metadata = {
        "pii_hash_key_id": run.figures.hash_key_id or "",
        "run_date": str(cfg.run_date),
        "flow_run_id": run.run_id,
    }
    with ExitStack() as stack:
        raw = stack.enter_context(raw_writer(cfg.lake_dir, cfg.run_date, metadata, run.run_id))
        yield Staged(raw=raw, stack=stack)


def plan(cfg: RunConfig) -> list[PageRange]:
    """The run's page ranges: one fetch task per range."""
    run_seed = run_seed_for(cfg.run_date, cfg.seed)
    pages = plan_pages(cfg.records, cfg.page_size, run_seed, seed_key(hash_key()))
    fetch_tasks = range_count(len(pages), cfg.fetch.concurrency, cfg.max_fetch_tasks)
    ranges = group_ranges(pages, fetch_tasks)
    get_run_logger().info(
        "run date %s: %d records in %d pages of <= %d, %d fetch tasks, from %s",
        cfg.run_date,
        cfg.records,
        len(pages),
        cfg.page_size,
        len(ranges),
        display_url(cfg.api_url),
    )
    return ranges


@in_step("fetch")
def fetch_and_mask(cfg: RunConfig, run: RunRecord, staged: Staged) -> pa.Table:
    """Fetch and mask every range, report progress as pages land, then stage the lake file
    sorted by person_key: source order (and so the seeded page a row came from) is not kept."""
    ranges = plan(cfg)
    total = sum(len(r.pages) for r in ranges)
    # A range that fails for a cause that can clear is fetched again alone, not the whole run.
    fetch_task = fetch_and_mask_range_task.with_options(**range_retry_options(cfg.fetch))
    submitted = [fetch_task.submit(cfg.fetch, r, cfg.run_date) for r in ranges]
    # The artifact's id: a sync caller gets it directly (Prefect types it "id or coroutine").
    progress: UUID = create_progress_artifact(  # type: ignore[assignment]
        progress=0.0, description=f"Pages fetched and masked for run date {cfg.run_date}"
    )
    tables, signatures, updated = [], set(), time.monotonic()
    run.figures.pages = run.figures.retries = run.figures.records_fetched = 0
    for future in submitted:  # in page order, whatever order the ranges finish in
        part: MaskedRange = future.result()
        tables.append(take_range(run, part, total))
        signatures |= part.signatures
        # At most one update a second (each is a call to the Prefect API), and always the last.
        if run.figures.pages == total or time.monotonic() - updated >= PROGRESS_SECONDS:
            update_progress_artifact(progress, progress=100.0 * run.figures.pages / total)
            updated = time.monotonic()
    run.figures.source_schema = " | ".join(sorted(signatures))
    with run.timed("lake"):
        # The domain rule needs the whole batch (how many persons share a domain), so it is
        # applied here, before the first layer is written; the analytical layer inherits it.
        shared = keep_shared_domains(pa.concat_tables(tables), cfg.privacy_k)
        del tables  # the ranges in source order: only the sorted batch lives on
        run.figures.domains_collapsed = shared.domains_replaced
        run.figures.records_domain_collapsed = shared.records_replaced
        run.kept_domains = shared.kept
        batch = in_key_order(shared.table)
        staged.raw.write(batch)
    return batch


def take_range(run: RunRecord, part: MaskedRange, total: int) -> pa.Table:
    """A masked range's rows, its figures into the run's; returns its rows."""
    table = part.take_table()
    run.secrets.append(part.secrets)
    run.figures.records_fetched = (run.figures.records_fetched or 0) + table.num_rows
    run.figures.pages = (run.figures.pages or 0) + part.pages
    run.figures.retries = (run.figures.retries or 0) + part.retries
    # Summed over mask task runs, which overlap with fetching and with each other.
    run.add_seconds("mask", part.seconds_mask)
    run.add_seconds("leak_hash", part.seconds_hash)
    get_run_logger().info(
        "pages %d/%d done (%d records, %d retries so far)",
        run.figures.pages,
        total,
        run.figures.records_fetched,
        run.figures.retries,
    )
    return table


@in_step("schema-drift")
def check_drift(cfg: RunConfig, run: RunRecord, staged: Staged, previous: str | None) -> None:
    """Compare the source's shape with the last committed run's; compose the report, apply the
    policy (a stopped run reports the change in its failure report instead)."""
    policy = cfg.schema_drift_policy
    change = compare_signatures(previous, run.figures.source_schema or "")
    if change is None:
        return
    run.figures.schema_change = change.describe()
    run.details.append(f"Source schema change: {change.describe()}")
    get_run_logger().warning("source schema changed: %s", change.describe())
    markdown = drift_markdown(change, policy, accepts(change, policy))
    enforce_policy(change, policy)
    description = f"Source schema drift detected on run date {cfg.run_date}."
    staged.artifacts.append(Artifact(DRIFT_ARTIFACT_KEY, description, markdown=markdown))


@in_step("validate")
def validate(
    cfg: RunConfig, run: RunRecord, staged: Staged, batch: pa.Table, generalized: pa.Table | None
) -> None:
    """One GX suite: the raw one on the masked batch, or (`generalized` given) the analytical
    one on its generalization; a failing batch is quarantined and the run stops. Once both
    passed, the validation artifact is staged."""
    if generalized is None:
        summary = validate_masked_task(batch, cfg.records, cfg.gx_dir)
    else:
        summary = validate_analytical_task(generalized, cfg.records, cfg.gx_dir)
    staged.validations.append(summary)
    if not summary.success:
        run.details += [f"Validation: {s.failures_text()}" for s in staged.validations]
        if summary.data_docs:
            run.details.append(f"Data Docs (counts only): {summary.data_docs}")
        scanner = run.scanner(cfg.run_date)
        path = quarantine(batch, cfg.lake_dir, cfg.run_date, scanner)
        if path is None:
            run.details.append(
                "The batch was not quarantined: after masking it still held raw values "
                f"({', '.join(scanner.report.hit_fields())})."
            )
        get_run_logger().error(
            "batch failed validation; %s", f"quarantined at {path}" if path else "not quarantined"
        )
        raise ValidationError(summary)
    if generalized is not None:
        staged.artifacts.append(validation_artifact(staged.validations, cfg.run_date))


@in_step("generalize")
def generalize(cfg: RunConfig, run: RunRecord, batch: pa.Table) -> pa.Table:
    """The analytical layer: ages to bands, rare domains to `other` (after the raw suite
    passed: generalization refuses batches it rejects, e.g. null keys)."""
    return generalize_persons_task(batch, cfg.run_date, cfg.privacy_k).table


@contextmanager
def open_transaction(cfg: RunConfig) -> Iterator[duckdb.DuckDBPyConnection]:
    """The DuckDB file under its lock with a transaction open: rolled back unless committed."""
    with open_db(cfg.duckdb_path, cfg.duckdb_lock_timeout, cfg.duckdb_limit) as con:
        con.begin()
        try:
            yield con
        finally:
            # After a commit this is a no-op error we ignore; otherwise it drops the staging.
            with suppress(duckdb.Error):
                con.rollback()


@in_step("load")
def load(cfg: RunConfig, run: RunRecord, staged: Staged, analytical: pa.Table) -> None:
    """Finish the staged lake file, take the DuckDB file (its locks) and stage the batch in one
    open transaction, rolled back unless the run commits."""
    with run.timed("lake"):
        staged.raw.finish()
    con = staged.con = staged.stack.enter_context(open_transaction(cfg))
    run.figures.records_loaded = stage_batch_task(con, analytical, cfg.run_date, run.run_id)


@in_step("privacy")
def protect(cfg: RunConfig, run: RunRecord, staged: Staged, analytical: pa.Table) -> None:
    """Stage the shareable extract (k-anonymous, a temp file) and the privacy figures."""
    staged.protected = protect_privacy_task(
        staged.connection(),
        cfg.lake_dir,
        analytical,
        cfg.run_date,
        run.run_id,
        cfg.privacy_k,
        cfg.quasi_identifiers,
    )
    staged.stack.enter_context(staged.protected.writer)
    protected, collapsed = staged.protected, run.figures.domains_collapsed or 0
    run.figures.update(privacy_run_columns(protected.metrics, protected.extract, collapsed))


@in_step("reports")
def compose(cfg: RunConfig, run: RunRecord, staged: Staged) -> None:
    """Compose the report artifacts in memory from the staged rows."""
    con = staged.connection()
    staged.composed = compose_user_metrics_task(
        con, cfg.run_date, cfg.records, cfg.privacy_k, cfg.charts
    )
    run.figures.seconds["charts"] = staged.composed.seconds_charts
    staged.artifacts += staged.composed.artifacts


@in_step("verify")
def verify(cfg: RunConfig, run: RunRecord, staged: Staged, log_lines: list[str]) -> None:
    """Check what is staged: row counts, then the leak scan of every staged output."""
    for name, writer in staged.files.items():
        rows = pq.ParquetFile(writer.temp).metadata.num_rows
        if rows != writer.rows:
            raise PipelineError(f"staged {name} holds {rows} rows, {writer.rows} were written")
    if run.figures.records_loaded != cfg.records:
        raise PipelineError(
            f"staged {run.figures.records_loaded} rows in DuckDB, {cfg.records} were requested"
        )
    with run.timed("leak_scan"):
        artifacts = staged.artifacts
        # Data Docs are on disk already (a failed validation's pages are its report): read too.
        docs = run_files(cfg.gx_dir, cfg.run_date) if cfg.gx_dir is not None else {}
        scan = scan_for_leaks_task(
            run.scanner(cfg.run_date),
            {name: writer.temp for name, writer in staged.files.items()},
            staged.connection(),
            cfg.run_date,
            {f"artifact {a.key}": a.markdown for a in artifacts if a.markdown is not None} | docs,
            {f"artifact {a.key}": a.table for a in artifacts if a.table is not None},
            log_lines,
        )
    run.figures.update(scan.as_run_columns())
    run.details += [f"Leak scan hit: {hit.label()}, {hit.count} cell(s)" for hit in scan.hits]
    if cfg.gx_dir is not None and (
        removed := remove_files(cfg.gx_dir, [h.output for h in scan.hits])
    ):
        run.details.append(f"Data Docs: {removed} file(s) holding a hit removed")
    scan.raise_if_leaked()
    staged.scan = scan
    assert staged.protected is not None  # staged before the scan
    markdown = privacy_markdown(
        staged.protected.metrics,
        staged.protected.extract,
        run.figures.domains_collapsed or 0,
        scan,
        run_date=cfg.run_date,
        records_collapsed=run.figures.records_domain_collapsed,
    )
    staged.artifacts.append(privacy_artifact(redact(markdown), cfg.run_date))


@in_step("commit")
def commit(cfg: RunConfig, run: RunRecord, staged: Staged) -> None:
    """Make the staged outputs the date's: DuckDB first, then the file renames.

    A crash between the two leaves complete staged files that `tasks.storage.recovery.check`
    rolls forward (the DuckDB rows name the run that staged them).
    """
    con = staged.connection()
    # Read in the run's open transaction, under the writer's lock: of two runs committing
    # different dates, the later one sees the earlier one's commit.
    staged.dated_keys = not publishes_latest(con, run.run_id, cfg.run_date)
    columns = run_columns(con)
    figures = {k: v for k, v in run.figures.as_columns().items() if k in columns}
    finish_run(con, run.run_id, "committed", committed_at=utc_now(), **figures)
    con.commit()
    for writer in staged.files.values():
        # From here on a failure must not drop the staged files: they are the committed batch.
        writer.keep = True
    for writer in staged.files.values():
        writer.commit()
    # The date is good now: an older run's quarantined batch no longer describes it.
    quarantine_path(cfg.lake_dir, cfg.run_date).unlink(missing_ok=True)
    get_run_logger().info(
        "committed %d records for %s; leak scan: %d outputs, 0 hits",
        run.figures.records_loaded,
        cfg.run_date,
        run.figures.leak_outputs_scanned,
    )
    # After the commit, so whatever reacts to the event finds the date's batch in place.
    measured = run.figures
    emit_batch_committed(
        BatchCommitted(
            run_date=cfg.run_date,
            flow_run_id=run.run_id,
            records=measured.records_loaded or 0,
            k_min=measured.k_min or 0,
            leak_outputs_scanned=measured.leak_outputs_scanned or 0,
            leak_hits=measured.leak_hits or 0,
        )
    )


@in_step("publish")
def publish(cfg: RunConfig, run: RunRecord, staged: Staged) -> None:
    """Create the composed artifacts, in order (each key is recorded as it is created): under
    the plain keys, or under `<key>-<run date>` when a newer date is committed."""
    if staged.dated_keys:
        get_run_logger().info(
            "a newer date than %s is committed: the artifacts go under <key>-%s, and the "
            "latest versions of the plain keys stay the newest date's",
            cfg.run_date,
            cfg.run_date,
        )
    create_artifacts(staged.artifacts, run.published, cfg.run_date if staged.dated_keys else None)


@in_step("finish")
def finish(cfg: RunConfig, run: RunRecord, staged: Staged) -> dict[str, Any]:
    """Mark the run completed; return what the CLI prints."""
    run.stop_clock()
    figures = run.figures.as_columns()
    record_end(cfg, run.run_id, "completed", figures, cfg.duckdb_lock_timeout)
    assert staged.protected is not None and staged.composed is not None
    get_run_logger().info(
        "loaded %d records for %s; lake file %s; %.1fs",
        run.figures.records_loaded,
        cfg.run_date,
        staged.raw.target,
        run.figures.seconds["total"],
    )
    return {
        **figures,
        "lake_file": str(staged.raw.target),
        "extract_file": str(staged.protected.writer.target),
        "data_docs": staged.validations[-1].data_docs if staged.validations else None,
        "answers": staged.composed.answers,
        "artifacts": list(run.published),
        "flow_run_id": run.run_id,
        "run_date": cfg.run_date.isoformat(),
        "records_requested": cfg.records,
        "duckdb_path": str(cfg.duckdb_path),
    }


def report_failure(cfg: RunConfig | None, run: RunRecord, exc: BaseException) -> BaseException:
    """Record the failed run (pipeline_runs + `run-failure`); return the error to raise.

    The returned error holds no source value (`tasks.common.errors.value_free`), and its line is
    the one recorded. What the date holds is read back from disk; the report never assumes it.
    """
    run.stop_clock()
    scanner = run.scanner(cfg.run_date) if cfg is not None and run.has_secrets() else None
    raised = value_free(exc, failure_text(exc, scanner))
    error = failure_text(raised)
    held: dict[str, Any] = {}
    try:
        if cfg is not None:
            held = _record_failure(cfg, run, error, busy=isinstance(exc, DatabaseBusyError))
    finally:
        details = [f"- {redact(line)}" for line in run.details]
        create_markdown_artifact(
            markdown=failure_markdown(
                cfg.run_date if cfg else None,
                run.run_id,
                run.step,
                error,
                held,
                run.published,
                details,
            ),
            key=FAILURE_ARTIFACT_KEY,
            description="Why the last run failed and what the date holds now.",
        )
    return raised


def _record_failure(cfg: RunConfig, run: RunRecord, error: str, busy: bool) -> dict[str, Any]:
    """Read back what the date holds and record it with the failure; returns what was read."""
    # The database may be what failed: wait for it briefly, never a whole lock timeout.
    wait = BUSY_WAIT_SECONDS if busy else READ_BACK_SECONDS
    wait = min(wait, cfg.duckdb_lock_timeout)
    held = read_back(cfg, wait)
    if run.step == "start":
        return held  # the run never got its pipeline_runs row
    figures = {**run.figures.as_columns(), **kept_columns(held), "error": error}
    try:
        record_end(cfg, run.run_id, "failed", {**figures, "failed_stage": run.step}, wait)
    except DatabaseBusyError:
        run.details.append(
            "The run's pipeline_runs row could not be updated: another run held the "
            "database; the next run's check marks it abandoned."
        )
    return held


def log_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """on_failure hook: one line for whoever watches the worker's log."""
    get_logger("flows.user_metrics").error(
        "flow run %s failed: %s (see the run-failure artifact)", flow_run.name, state.message
    )


def log_crash(flow: Any, flow_run: Any, state: Any) -> None:
    """on_crashed hook: the process running the flow died or was stopped before it finished."""
    get_logger("flows.user_metrics").error(
        "flow run %s crashed: %s (the next run's check repairs what it left)",
        flow_run.name,
        state.message,
    )
