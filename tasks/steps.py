"""Thin Prefect task wrappers over the plain stage functions (which tests call directly).

Tasks that touch raw records never persist results or cache entries: raw PII must not reach the
Prefect results folder, so `persist_result=False` and `NO_CACHE` are set explicitly here.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.charts import build_charts, render_pngs
from tasks.errors import raises_value_free
from tasks.fetch import FetchConfig, FetchedRange, fetch_range
from tasks.generalize import generalize
from tasks.handoff import HandsOverTable
from tasks.lake import AtomicParquetWriter
from tasks.leak_scan import LeakScanner, LeakScanReport, SecretHashes, secret_hashes
from tasks.load import stage_batch
from tasks.mask import mask_pii
from tasks.plan import PageRange
from tasks.privacy import (
    KEEP_DOMAINS,
    RiskMetrics,
    ShareableExtract,
    collapse_rare_domains,
    rare_domains,
    risk_metrics,
    shareable_extract,
    shareable_writer,
    small_cell_note,
    stage_shareable,
    suppress_small_counts,
)
from tasks.publish import (
    Artifact,
    compose_reports,
    germany_share_sentence,
    over_60_sentence,
    top_countries_sentence,
)
from tasks.reports import gmail_by_age_group, report_history, report_results
from tasks.secrets import resolve_hash_key
from tasks.settings import get_settings
from tasks.validate import ValidationSummary, validate_analytical, validate_masked

# Nothing here needs Prefect's result persistence or caching, and the first two tasks hold raw
# records: keep every result in memory only (and never hash batches for cache keys).
_RAW = {"persist_result": False, "cache_policy": NO_CACHE}
VALIDATION_ARTIFACT_KEY = "validation-results"
FAILURE_ARTIFACT_KEY = "run-failure"
DRIFT_ARTIFACT_KEY = "schema-drift"


@dataclass
class MaskedRange(HandsOverTable):
    """A masked range with what it cost, handed from the mask task to the lake writer."""

    table: pa.Table | None
    # Hashes of the range's raw values for the run's leak scan; the raw rows are gone.
    secrets: SecretHashes
    pages: int
    attempts: int
    retries: int
    signatures: set[str]
    seconds_fetch: float
    seconds_mask: float
    seconds_hash: float


@cache
def hash_key() -> bytes:
    """The HMAC key, resolved once per process (so it is never a task parameter)."""
    return resolve_hash_key(get_settings())


@task(name="fetch_page_range", task_run_name="fetch {page_range.label}", **_RAW)
@raises_value_free
def fetch_page_range(config: FetchConfig, page_range: PageRange) -> tuple[FetchedRange, float]:
    """Fetch a range of pages (raw records stay in memory only)."""
    started = time.perf_counter()
    fetched = fetch_range(config, page_range)
    return fetched, time.perf_counter() - started


@task(name="mask_pii", **_RAW)
@raises_value_free
def mask_page_range(fetched: tuple[FetchedRange, float], run_date: dt.date) -> MaskedRange:
    """Mask a fetched range and hash its raw values for the leak scan; the raw rows end here."""
    raw, seconds_fetch = fetched
    source = raw.take_table()
    started = time.perf_counter()
    table = mask_pii(source, run_date, hash_key())
    masked = time.perf_counter()
    secrets = secret_hashes(source)
    return MaskedRange(
        table=table,
        secrets=secrets,
        pages=raw.pages,
        attempts=raw.attempts,
        retries=raw.retries,
        signatures=raw.signatures,
        seconds_fetch=seconds_fetch,
        seconds_mask=masked - started,
        seconds_hash=time.perf_counter() - masked,
    )


@task(name="validate_masked", **_RAW)
@raises_value_free
def validate_masked_batch(table: pa.Table, expected_rows: int) -> ValidationSummary:
    """Run the masked-raw suite (the summary holds counts only)."""
    return validate_masked(table, expected_rows)


@dataclass
class Generalized:
    """The analytical batch and how many rare email domains became `other`."""

    table: pa.Table
    domains_collapsed: int
    records_collapsed: int


@task(name="generalize_persons", **_RAW)
@raises_value_free
def generalize_persons(masked: pa.Table, run_date: dt.date, k: int) -> Generalized:
    """Masked batch -> analytical batch (age group, domain, country); rare domains -> `other`."""
    table = generalize(masked, run_date)
    _, records_collapsed = rare_domains(table, k, KEEP_DOMAINS)
    table, domains_collapsed = collapse_rare_domains(table, k)
    return Generalized(table, domains_collapsed, records_collapsed)


@task(name="validate_analytical", **_RAW)
@raises_value_free
def validate_analytical_batch(table: pa.Table, expected_rows: int) -> ValidationSummary:
    """Run the analytical suite (the summary holds counts only)."""
    return validate_analytical(table, expected_rows)


def validation_artifact(summaries: list[ValidationSummary], run_date: dt.date) -> Artifact:
    """Every expectation's outcome as a table artifact (counts, never values)."""
    return Artifact(
        VALIDATION_ARTIFACT_KEY,
        f"Great Expectations results for run date {run_date} (counts only).",
        table=[row for summary in summaries for row in summary.to_rows()],
    )


@task(name="load_persons", **_RAW)
@raises_value_free
def load_persons(
    con: duckdb.DuckDBPyConnection, analytical: pa.Table, run_date: dt.date, flow_run_id: str
) -> int:
    """Stage the run date's batch and report rows in the run's open DuckDB transaction."""
    return stage_batch(con, analytical, run_date, flow_run_id)


# Count columns of each published table, and the figures derived from them (hidden alongside).
_GERMAN_COUNTS = ("german_users", "german_gmail_users")
_COUNTS: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]] | None]] = {
    "germany-gmail-share": (_GERMAN_COUNTS, {"gmail_share_pct": _GERMAN_COUNTS}),
    "top-gmail-countries": (("gmail_users",), None),
    "gmail-users-over-60": (("gmail_users_over_60",), None),
    "gmail-by-age-group": (("gmail_users",), None),
    "history": (_GERMAN_COUNTS, {"gmail_share_pct": _GERMAN_COUNTS}),
}


def _published(key: str, df: pd.DataFrame, k: int) -> pd.DataFrame:
    """A table as people see it: counts of 1..k-1 (and figures derived from them) as `<k`."""
    counts, derived = _COUNTS[key]
    return suppress_small_counts(df, counts, k, derived=derived)


@dataclass
class Published:
    """The report artifacts composed for the run, and the answers for the CLI."""

    answers: list[str]
    artifacts: list[Artifact]
    seconds_charts: float = 0.0  # rendering every chart (one browser session)


@task(name="compose_reports", **_RAW)
@raises_value_free
def compose_user_metrics(
    con: duckdb.DuckDBPyConnection, run_date: dt.date, records: int, k: int
) -> Published:
    """The report tables and the markdown report with charts, small counts as `<k` (not created)."""
    # Read through the run's open transaction: the staged rows, not the committed ones.
    stored = report_results(con, run_date)
    by_age = gmail_by_age_group(con, run_date)
    history = report_history(con)
    # Exact values stay in DuckDB; what people see hides counts of fewer than k people.
    reports = {key: _published(key, df, k) for key, df in stored.items()}
    figures = build_charts(
        reports["top-gmail-countries"],
        _published("gmail-by-age-group", by_age, k),
        _published("history", history, k),
    )
    started = time.perf_counter()
    images = render_pngs(figures)  # one browser session for every chart; never raises
    seconds_charts = time.perf_counter() - started
    artifacts = compose_reports(run_date, records, reports, images, note=small_cell_note(k))
    answers = [
        germany_share_sentence(reports["germany-gmail-share"]),
        top_countries_sentence(reports["top-gmail-countries"]),
        over_60_sentence(reports["gmail-users-over-60"]),
    ]
    return Published(answers=answers, artifacts=artifacts, seconds_charts=seconds_charts)


@dataclass
class Protected:
    """Risk figures of the analytical batch and the k-anonymous extract, staged for the date."""

    metrics: RiskMetrics
    extract: ShareableExtract
    writer: AtomicParquetWriter  # the staged extract file, renamed into place at the commit


@task(name="protect_privacy", **_RAW)
@raises_value_free
def protect_privacy(
    con: duckdb.DuckDBPyConnection,
    lake_dir: Path,
    analytical: pa.Table,
    run_date: dt.date,
    flow_run_id: str,
    k: int,
    quasi_identifiers: tuple[str, ...],
) -> Protected:
    """Measure re-identification risk; build and stage the k-anonymous extract (table and file)."""
    metrics = risk_metrics(analytical, quasi_identifiers, k)
    extract = shareable_extract(analytical, k)
    stage_shareable(con, extract.table, run_date, flow_run_id)
    metadata = {"run_date": str(run_date), "flow_run_id": flow_run_id}
    writer = shareable_writer(extract.table, lake_dir, run_date, metadata, owner=flow_run_id)
    return Protected(metrics=metrics, extract=extract, writer=writer)


@task(name="scan_for_leaks", **_RAW)
@raises_value_free
def scan_for_leaks(
    scanner: LeakScanner,
    files: dict[str, Path],
    con: duckdb.DuckDBPyConnection,
    run_date: dt.date,
    texts: dict[str, str],
    rows: dict[str, list[dict[str, Any]]],
    log_lines: list[str],
) -> LeakScanReport:
    """Look for any raw value of the batch in everything the run staged; names fields only."""
    for name, path in files.items():
        scanner.scan_parquet(path, name)
    # The run's own connection: its open transaction shows the staged rows.
    scanner.scan_duckdb(con, run_date=run_date)
    for name, text in texts.items():
        scanner.scan_text(name, text)
    for name, table_rows in rows.items():
        scanner.scan_rows(name, table_rows)
    scanner.scan_lines("run log", list(log_lines))
    return scanner.report
