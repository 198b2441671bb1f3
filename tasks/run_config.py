"""One run's effective configuration: settings overridden by flow parameters, checked up front."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from tasks.fetch import FetchConfig
from tasks.params import (
    InputError,
    check_api_url,
    check_page_size,
    check_records,
    parse_run_date,
)
from tasks.plan import run_seed_for
from tasks.settings import Settings


@dataclass(frozen=True)
class RunConfig:
    """What this run does, after overrides and checks."""

    run_date: dt.date
    records: int
    page_size: int
    run_seed: int
    fetch: FetchConfig
    lake_dir: Path
    duckdb_path: Path
    max_fetch_tasks: int

    @property
    def api_url(self) -> str:
        """Base URL of the API, e.g. `http://127.0.0.1:8000/api/v2`."""
        return self.fetch.api_url


def resolve_run_config(
    settings: Settings,
    *,
    api_url: str | None = None,
    records: int | None = None,
    page_size: int | None = None,
    run_date: str | dt.date | None = None,
    seed: int | None = None,
    locale: str | None = None,
) -> RunConfig:
    """Merge per-run overrides into settings; raises InputError naming the first bad value."""
    day = parse_run_date(run_date)
    if seed is not None and not 1 <= seed <= 2**31 - 1:
        raise InputError(f"seed={seed} must be between 1 and {2**31 - 1} (0 means 'no seed')")
    return RunConfig(
        run_date=day,
        records=check_records(records if records is not None else settings.faker_records),
        page_size=check_page_size(page_size if page_size is not None else settings.faker_page_size),
        run_seed=run_seed_for(day, seed if seed is not None else settings.faker_seed),
        fetch=FetchConfig(
            api_url=check_api_url(api_url or settings.faker_api_url),
            locale=locale or settings.faker_locale,
            birthday_end=day.isoformat(),
            concurrency=settings.fetch_concurrency,
            requests_per_minute=settings.requests_per_minute,
            connect_timeout=settings.http_connect_timeout_seconds,
            read_timeout=settings.http_read_timeout_seconds,
            max_attempts=settings.retry_max_attempts,
            backoff_base=settings.retry_backoff_base_seconds,
            backoff_max=settings.retry_backoff_max_seconds,
            retry_after_max=settings.retry_after_max_seconds,
        ),
        lake_dir=settings.data_lake_dir,
        duckdb_path=settings.duckdb_path,
        max_fetch_tasks=settings.fetch_max_tasks,
    )
