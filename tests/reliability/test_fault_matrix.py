"""Fault matrix: every fault the local API injects, alone and combined, against the real flow.

Each case first loads a clean baseline for the run date, so there is a previous lake file and
DuckDB batch to protect, then runs the flow against a faulted server. Only two outcomes are
allowed, nothing in between:

- completed: exactly the requested records in the lake file and in DuckDB, one new batch;
- failed: a clear message naming the page and cause (or the field / validation cause), the
  previous lake file and DuckDB rows of the date byte-for-byte untouched, and the failure recorded
  in pipeline_runs.

The API being unreachable when a run starts is not a row here: the flow refuses it as bad input
before any request or write (see test_bad_input.py). The API going away mid-run is a row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from flows.user_metrics import user_metrics_pipeline
from local_api.server import LocalApiServer
from tests.reliability.conftest import (
    Baseline,
    Site,
    db_query,
    lake_file,
    run_status,
    snapshot,
    temp_files,
)
from tests.reliability.matrix_table import MatrixRow

RUN_DATE = dt.date(2026, 9, 15)
RECORDS = 600
PAGE_SIZE = 100
BASELINE_RECORDS = 400  # differs from RECORDS, so a completed run visibly replaced the batch
SEED = 11
BASELINE = {"run_date": RUN_DATE, "records": BASELINE_RECORDS, "page_size": PAGE_SIZE, "seed": SEED}

# Retries short enough for a quick matrix, attempts enough that probabilistic faults recover.
FAST_RETRIES = {
    "RETRY_MAX_ATTEMPTS": "8",
    "RETRY_BACKOFF_BASE_SECONDS": "0.01",
    "RETRY_BACKOFF_MAX_SECONDS": "0.05",
    "RETRY_AFTER_MAX_SECONDS": "0.05",
    "HTTP_READ_TIMEOUT_SECONDS": "2",
}
# A 429 storm only clears if we actually wait out the window (1 s) the server asks for.
HONOUR_RETRY_AFTER = {"RETRY_AFTER_MAX_SECONDS": "1.5"}
# Without Retry-After the backoff alone must outlast the window.
SLOW_BACKOFF = {"RETRY_BACKOFF_BASE_SECONDS": "0.1", "RETRY_BACKOFF_MAX_SECONDS": "1.0"}

# A failure must say where and why: a page, a source field, or the run-level schema comparison.
NAMED_CAUSE = re.compile(r"page \d+|field '[\w.]+'|source schema changed")


@dataclasses.dataclass(frozen=True)
class Case:
    """One fault configuration and the outcome it must have."""

    name: str
    faults: dict[str, Any]
    expect: str  # "completed" | "failed"
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    # Text the failure message must contain (beyond naming a page or field), e.g. the cause.
    cause: str | None = None
    # Stop the server after this many responses: the API goes away mid-run.
    stop_after: int | None = None
    quarantined: bool = False
    # A recoverable fault must cost retries, or the case did not exercise it.
    faults_fire: bool = True


RATE_LIMIT = {"rate_limit": 3, "rate_window": 1.0}
CASES = [
    Case("429 storm, Retry-After seconds", {**RATE_LIMIT}, "completed", HONOUR_RETRY_AFTER),
    Case(
        "429 storm, Retry-After http-date",
        {**RATE_LIMIT, "retry_after": "http-date"},
        "completed",
        HONOUR_RETRY_AFTER,
    ),
    Case(
        "429 storm, no Retry-After",
        {**RATE_LIMIT, "retry_after": "none"},
        "completed",
        SLOW_BACKOFF,
    ),
    Case(
        "429 beyond the retry budget",
        {"rate_limit": 1, "rate_window": 60.0},
        "failed",
        cause="HTTP 429",
    ),
    Case(
        "5xx bursts 500/502/503 (30%)",
        {"error_rate": 0.3, "error_statuses": (500, 502, 503)},
        "completed",
    ),
    Case("first 2 requests per page fail", {"fail_first": 2}, "completed"),
    Case("connection resets (30%)", {"reset_rate": 0.3}, "completed"),
    Case(
        "read timeouts (30%)",
        # Rate and fault_seed=7 chosen so hangs do fire among the first requests (2nd and 5th).
        {"hang_rate": 0.3, "hang_seconds": 3.0},
        "completed",
        {"HTTP_READ_TIMEOUT_SECONDS": "0.5"},
    ),
    Case("truncated JSON bodies (30%)", {"truncate_rate": 0.3}, "completed"),
    Case(
        "truncated connections (30%)",
        {"truncate_rate": 0.3, "truncate_mode": "connection"},
        "completed",
    ),
    Case("short pages (30%)", {"short_rate": 0.3}, "completed"),
    Case("every page short", {"short_rate": 1.0}, "failed", cause="short page"),
    Case(
        "drift: country_code renamed county_code",
        {"drift": ("county_code",)},
        "failed",
        cause="address.country_code",
    ),
    Case("drift: email missing", {"drift": ("missing-email",)}, "failed", cause="'email'"),
    Case("drift: birthday wrong type", {"drift": ("wrong-type",)}, "failed", cause="birthday"),
    Case(
        "drift: extra field (additive)",
        {"drift": ("extra-field",)},
        "completed",
        faults_fire=False,
    ),
    Case(
        "drift: extra field, SCHEMA_DRIFT_POLICY=fail",
        {"drift": ("extra-field",)},
        "failed",
        {"SCHEMA_DRIFT_POLICY": "fail"},
        cause="1 unexpected field(s) of type string",
    ),
    Case(
        "bad values (validation)",
        {"drift": ("bad-values",)},
        "failed",
        cause="email",
        quarantined=True,
    ),
    Case("API down (503 on every request)", {"down": True}, "failed", cause="HTTP 503"),
    Case(
        "API goes away mid-run",
        {"latency_ms": 20},
        "failed",
        {"FETCH_CONCURRENCY": "1"},
        cause="connection error",
        stop_after=3,
    ),
    # A hostile source's answers: refused on the first one, never retried, never followed.
    Case(
        "gzip bomb (1 MB expanding to 1 GiB)",
        {"gzip_bomb_rate": 1.0},
        "failed",
        cause="-byte body limit",
    ),
    Case("redirect to another URL", {"redirect_rate": 1.0}, "failed", cause="HTTP 302 redirect"),
    Case("JSON nested 900 deep", {"deep_json_rate": 1.0}, "failed", cause="JSON nesting limit"),
    Case(
        "gzip bodies under the size limit",
        {"gzip_bomb_rate": 1.0, "gzip_bomb_bytes": 1 << 20},
        "completed",
        faults_fire=False,
    ),
    Case(
        "combined: fail-first + truncate + reset + latency",
        {"fail_first": 1, "truncate_rate": 0.2, "reset_rate": 0.2, "latency_ms": 20},
        "completed",
    ),
    Case(
        "combined: 429 + 5xx + short pages",
        {**RATE_LIMIT, "error_rate": 0.2, "error_statuses": (502, 503), "short_rate": 0.2},
        "completed",
        HONOUR_RETRY_AFTER,
    ),
    Case(
        "combined: drift county_code + 5xx",
        {"drift": ("county_code",), "error_rate": 0.3},
        "failed",
        cause="address.country_code",
    ),
]


def _stop_when(server: LocalApiServer, responses: int) -> threading.Thread:
    """Stop the server once it has answered `responses` requests (the API goes away)."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while server.stats()["total"] < responses and time.monotonic() < deadline:
            time.sleep(0.005)
        server.stop()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def classify(
    case: Case,
    state: Any,
    before: Any,
    lake: Path,
    db: Path,
) -> tuple[str, int, list[str]]:
    """(outcome, records loaded, contract violations) of a faulted run."""
    problems: list[str] = []
    after = snapshot(lake, db, RUN_DATE)
    flow_run_id = str(state.state_details.flow_run_id)
    if state.is_completed():
        summary = state.result()
        loaded = summary["records_loaded"]
        if loaded != RECORDS:
            problems.append(f"records_loaded={loaded}, requested {RECORDS}")
        rows = pq.read_table(lake_file(lake, RUN_DATE)).num_rows
        if rows != RECORDS:
            problems.append(f"lake file has {rows} rows, requested {RECORDS}")
        if len(after.rows) != RECORDS or after.flow_run_ids != {flow_run_id}:
            problems.append(
                f"DuckDB has {len(after.rows)} rows for the date from runs {after.flow_run_ids}"
            )
        status = run_status(db, flow_run_id)
        if not status or status[0] != "completed":
            problems.append(f"pipeline_runs row is {status}")
        if case.faults_fire and not summary["retries"]:
            # Otherwise the case proved nothing: the fault never reached the pipeline.
            problems.append("no retries: the fault never fired")
        return "completed", len(after.rows), problems

    error = state.result(raise_on_failure=False)
    message = str(error) if isinstance(error, BaseException) else str(state.message)
    if not (NAMED_CAUSE.search(message) or case.quarantined):
        problems.append(f"message names no page, field or schema change: {message!r}")
    if case.cause and case.cause not in message:
        problems.append(f"message does not name the cause {case.cause!r}: {message!r}")
    if "\n" in message.strip():
        problems.append(f"message is not one line: {message!r}")
    if after.lake_bytes != before.lake_bytes:
        problems.append("the previous lake file changed")
    if after.rows != before.rows or after.reports != before.reports:
        problems.append("the date's DuckDB rows changed")
    status = run_status(db, flow_run_id)
    if status is None or status[0] != "failed":
        problems.append(f"pipeline_runs row of the failed run is {status}")
    elif not status[1] or type(error).__name__ not in status[1]:
        problems.append(f"pipeline_runs.error {status[1]!r} does not name {type(error).__name__}")
    if case.quarantined:
        quarantine = lake / "quarantine" / RUN_DATE.strftime("%Y/%m/%d") / "persons.parquet"
        if not quarantine.exists():
            problems.append("the failing batch was not quarantined")
    return "failed", len(after.rows) if after.rows != before.rows else 0, problems


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(
    case: Case,
    start_api: Callable[..., LocalApiServer],
    site: Site,
    record_fault_row: Callable[[MatrixRow], None],
    baseline: Baseline,
) -> None:
    lake, db = site.lake, site.db
    baseline.restore(lake, db)
    before = snapshot(lake, db, RUN_DATE)
    assert len(before.rows) == BASELINE_RECORDS and before.lake_bytes
    site.set_env(**FAST_RETRIES)

    site.set_env(**case.env)
    server = start_api(fault_seed=7, **case.faults)
    watcher = _stop_when(server, case.stop_after) if case.stop_after else None
    started = time.perf_counter()
    state = user_metrics_pipeline(
        api_url=server.base_url,
        records=RECORDS,
        page_size=PAGE_SIZE,
        run_date=RUN_DATE,
        seed=SEED,
        return_state=True,
    )
    seconds = time.perf_counter() - started
    if watcher:
        watcher.join(timeout=5)

    outcome, loaded, problems = classify(case, state, before, lake, db)
    if temp_files(lake):
        problems.append(f"temp files left in the lake: {temp_files(lake)}")
    label = outcome if not problems else f"INVALID ({outcome})"
    if outcome != case.expect:
        label += f", expected {case.expect}"
    record_fault_row(MatrixRow(case.name, label, loaded, seconds))
    assert not problems, problems
    assert outcome == case.expect, (outcome, state.message)


def test_failed_fetch_leaves_no_rows_for_a_new_date(
    start_api: Callable[..., LocalApiServer],
    site: Site,
) -> None:
    """With no previous batch, a failed run writes nothing for the date and records the failure."""
    lake, db = site.lake, site.db
    site.set_env(**FAST_RETRIES)
    server = start_api(down=True)
    state = user_metrics_pipeline(
        api_url=server.base_url, records=300, page_size=100, run_date=RUN_DATE, return_state=True
    )
    assert state.is_failed()
    assert not lake_file(lake, RUN_DATE).exists() and not temp_files(lake)
    assert db_query(db, "select count(*) from persons_anonymized") == [(0,)]
    status = run_status(db, str(state.state_details.flow_run_id))
    assert status and status[0] == "failed" and "FetchError: page " in status[1], status
