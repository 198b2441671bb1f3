"""One run's effective configuration: settings overridden by flow parameters, checked up front."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tasks.common.inputs import (
    RunOptions,
    check_api_url,
    check_page_size,
    check_reachable,
    check_records,
    check_seed,
    parse_run_date,
)
from tasks.common.secrets import hash_key
from tasks.common.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class FetchConfig:
    """Everything a fetch task needs; plain data so it pickles to any task runner."""

    api_url: str
    locale: str = "en_US"
    # Ask for people born by the run date, so a backfilled date never meets a negative age.
    birthday_end: str | None = None
    concurrency: int = 8
    requests_per_minute: int = 0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    # Connect, headers and body of one response, all told (tasks/ingest/fetch.py enforces it).
    response_deadline: float = 60.0
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 60.0
    # A range whose pages ran out of attempts for a cause that can clear is fetched again, whole,
    # by its task's retries (flows/steps.py): this many times, this long after the failure.
    range_retries: int = 2
    range_retry_delay: float = 60.0
    # The Prefect global concurrency limit that spaces requests across processes, when the run
    # found one on its server; None: the in-process limiter (requests_per_minute) applies.
    rate_limit_name: str | None = None
    # Wall-clock time (Unix seconds) after which no request of this run may be in flight: the
    # run's own deadline, when it has one, so fetch threads stop with the run.
    run_deadline: float | None = None


@dataclass(frozen=True)
class ChartBrowserConfig:
    """Which browser renders the report's chart images (tasks/reporting/charts.py)."""

    # An explicit browser, used as given; None: searched for on this machine.
    path: Path | None = None
    # With none found, download kaleido's Chrome for Testing (from the internet).
    allow_download: bool = False


def chart_browser_config(settings: Settings) -> ChartBrowserConfig:
    """The settings' chart browser: BROWSER_PATH and CHARTS_ALLOW_BROWSER_DOWNLOAD."""
    return ChartBrowserConfig(settings.browser_path, settings.charts_allow_browser_download)


@dataclass(frozen=True)
class RunConfig:
    """What this run does, after overrides and checks."""

    run_date: dt.date
    records: int
    page_size: int
    seed: int | None  # the run's seed; None: derived from the run date (tasks.ingest.plan)
    fetch: FetchConfig
    lake_dir: Path
    duckdb_path: Path
    max_fetch_tasks: int
    privacy_k: int
    quasi_identifiers: tuple[str, ...]
    schema_drift_policy: str
    duckdb_lock_timeout: float
    # The names of the Prefect concurrency limits the settings give (the request budget's and
    # the DuckDB file's); a run uses each only if its server has it (flows/steps.py `start`).
    rate_limit_name: str
    duckdb_limit_name: str
    # The DuckDB file's limit when the run found it on its server; None: the file lock alone.
    duckdb_limit: str | None = None
    # Great Expectations' folder (Data Docs); None: validation writes nothing.
    gx_dir: Path | None = None
    # The browser for the report's charts; by default none set and no download.
    charts: ChartBrowserConfig = ChartBrowserConfig()

    @property
    def api_url(self) -> str:
        """Base URL of the API, e.g. `http://127.0.0.1:8000/api/v2`."""
        return self.fetch.api_url


def with_run_deadline(cfg: RunConfig, at: float) -> RunConfig:
    """`cfg` with its fetches bound to the run's deadline (Unix seconds)."""
    return dataclasses.replace(cfg, fetch=dataclasses.replace(cfg.fetch, run_deadline=at))


def _given(value: T | None, default: T) -> T:
    return default if value is None else value


def resolve_run_config(
    settings: Settings, options: RunOptions, run_date: str | dt.date | None = None
) -> RunConfig:
    """Merge a run's options into the settings; raises InputError naming the first bad value."""
    day = parse_run_date(run_date)
    # An option given as 0 is a bad value, never "unset": only None falls back to the setting.
    return RunConfig(
        run_date=day,
        records=check_records(_given(options.records, settings.faker_records)),
        page_size=check_page_size(_given(options.page_size, settings.faker_page_size)),
        seed=check_seed(_given(options.seed, settings.faker_seed)),
        fetch=FetchConfig(
            api_url=check_api_url(_given(options.api_url, settings.faker_api_url)),
            locale=_given(options.locale, settings.faker_locale),
            birthday_end=day.isoformat(),
            concurrency=settings.fetch_concurrency,
            requests_per_minute=settings.requests_per_minute,
            connect_timeout=settings.http_connect_timeout_seconds,
            read_timeout=settings.http_read_timeout_seconds,
            response_deadline=settings.fetch_response_deadline_seconds,
            max_attempts=settings.retry_max_attempts,
            backoff_base=settings.retry_backoff_base_seconds,
            backoff_max=settings.retry_backoff_max_seconds,
            retry_after_max=settings.retry_after_max_seconds,
            range_retries=settings.fetch_range_retries,
            range_retry_delay=settings.fetch_range_retry_delay_seconds,
        ),
        lake_dir=settings.data_lake_dir,
        duckdb_path=settings.duckdb_path,
        gx_dir=settings.gx_dir or settings.data_lake_dir.parent / "gx",
        max_fetch_tasks=settings.fetch_max_tasks,
        privacy_k=settings.privacy_k,
        quasi_identifiers=settings.quasi_identifiers,
        schema_drift_policy=settings.schema_drift_policy,
        duckdb_lock_timeout=settings.duckdb_lock_timeout_seconds,
        rate_limit_name=settings.rate_limit_name,
        duckdb_limit_name=settings.duckdb_limit_name,
        charts=chart_browser_config(settings),
    )


def checked_run_config(
    settings: Settings, options: RunOptions, run_date: str | dt.date | None = None
) -> RunConfig:
    """The run's config once every input is checked: values, API reachable, HMAC key present.

    Shared by the CLI (before Prefect starts) and the flow (for deployment runs), so both refuse
    bad input before any request or write.
    """
    cfg = resolve_run_config(settings, options, run_date)
    check_reachable(cfg.api_url)
    hash_key()
    return cfg
