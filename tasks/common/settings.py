"""Typed settings for the pipeline, read from the environment (and `.env`) once per process."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The bounds of the inputs are declared once, beside their checks.
from tasks.common.inputs import (
    MAX_PAGE_SIZE,
    MAX_RECORDS,
    MAX_SEED,
    MIN_DEADLINE_SECONDS,
    InputError,
    settings_error_line,
)

PUBLIC_API_URL = "https://fakerapi.it/api/v2"
# The flows' task runners (flows/runners.py).
RunnerKind = Literal["threads", "dask"]
# Names the dotenv file the settings read (default `.env` in the working directory); an empty
# value reads none. Only the process environment sets it: the test session empties it, so a
# developer's `.env` never reaches a test, nor the subprocesses tests start.
ENV_FILE_VARIABLE = "FAKER_DATAFLOW_ENV_FILE"
DEFAULT_ENV_FILE = ".env"


def env_file() -> Path | None:
    """The dotenv file settings read: $FAKER_DATAFLOW_ENV_FILE, `.env` if unset, none if empty."""
    value = os.environ.get(ENV_FILE_VARIABLE, DEFAULT_ENV_FILE).strip()
    return Path(value) if value else None


# File secrets, read by pydantic-settings (`secrets_dir`): a file per setting, named after it
# (`pii_hash_key`). These variables say where the settings are read from, so only the process
# environment sets them, as FAKER_DATAFLOW_ENV_FILE; the test session empties SECRETS_DIR.
SECRETS_DIR_VARIABLE = "SECRETS_DIR"
DEFAULT_SECRETS_DIR = Path("/run/secrets")  # where Docker and Compose mount file secrets
KEY_FILE_VARIABLE = "PII_HASH_KEY_FILE"
KEY_FILE_NAME = "pii_hash_key"


def secrets_dirs() -> list[Path]:
    """The folders settings read file secrets from, the last one winning: $SECRETS_DIR
    (/run/secrets if unset, none if empty), then the folder of the file $PII_HASH_KEY_FILE."""
    value = os.environ.get(SECRETS_DIR_VARIABLE)
    if value is None:
        folders = [DEFAULT_SECRETS_DIR]
    else:
        folders = [Path(value.strip())] if value.strip() else []
    if key_file := os.environ.get(KEY_FILE_VARIABLE, "").strip():
        path = Path(key_file)
        if path.name.lower() != KEY_FILE_NAME:
            raise InputError(
                f"{KEY_FILE_VARIABLE} must name a file called {KEY_FILE_NAME} (file secrets are "
                f"read by setting name): rename the file, or set {SECRETS_DIR_VARIABLE} to a "
                f"folder holding {KEY_FILE_NAME}"
            )
        folders.append(path.parent)
    # A missing folder holds no secret (pydantic-settings would warn about each).
    return [folder for folder in folders if folder.is_dir()]


class Settings(BaseSettings):
    """Every knob of the pipeline; flow parameters override these per run."""

    # The issue fixes the env names (FAKER_API_URL, DATA_LAKE_DIR, DUCKDB_PATH, PII_HASH_KEY), so
    # fields are named after their variables instead of sharing one prefix.
    # env_ignore_empty: an empty variable is unset, so `.env.example`'s `PII_HASH_KEY=` leaves the
    # key to a file secret rather than hiding it.
    model_config = SettingsConfigDict(
        env_file=DEFAULT_ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,
    )

    def __init__(self, **values: Any) -> None:
        # The files are looked up per instance, not fixed in model_config at import time; an
        # explicit `_env_file` or `_secrets_dir` (None: none) still wins.
        values.setdefault("_env_file", env_file())
        values.setdefault("_secrets_dir", secrets_dirs())
        super().__init__(**values)

    faker_api_url: str = Field(
        PUBLIC_API_URL, description="Base URL of the Faker API, up to the version (…/api/v2)."
    )
    faker_records: int = Field(
        30_000, description="Records to fetch per run.", ge=1, le=MAX_RECORDS
    )
    faker_page_size: int = Field(
        MAX_PAGE_SIZE,
        description=f"Records per request; the API clamps above {MAX_PAGE_SIZE}.",
        ge=1,
        le=MAX_PAGE_SIZE,
    )
    faker_locale: str = Field("en_US", description="Faker locale sent as `_locale`.")
    faker_seed: int | None = Field(
        None,
        description="Run seed; page seeds derive from it so a run is reproducible. "
        "Unset: derived from the run date, so each day differs and a rerun repeats its day.",
        ge=1,
        le=MAX_SEED,
    )
    fetch_concurrency: int = Field(8, description="Requests in flight at once.", ge=1, le=64)
    fetch_max_tasks: int = Field(
        32,
        description="Upper bound on fetch task runs; pages are grouped into this many ranges.",
        ge=1,
        le=1000,
    )
    requests_per_minute: int = Field(
        0,
        description="Request budget per minute; 0 means unlimited (the public API allows about "
        "30). Shared by every process through RATE_LIMIT_NAME when a Prefect server has that "
        "limit (`make serve` and the compose worker create it), else per process.",
        ge=0,
    )
    alert_webhook_url: SecretStr | None = Field(
        None,
        description="Where the alert automations post (a Slack incoming webhook or any JSON "
        "receiver); applied by `make serve` and the compose worker. Unset: alerts are off.",
    )
    rate_limit_name: str = Field(
        "faker-api-requests",
        description="Prefect global concurrency limit (with slot decay) that spaces requests "
        "across processes; created from REQUESTS_PER_MINUTE by `make serve` and the worker.",
    )
    http_connect_timeout_seconds: float = Field(5.0, description="TCP connect timeout.", gt=0)
    http_read_timeout_seconds: float = Field(30.0, description="Read timeout per request.", gt=0)
    fetch_response_deadline_seconds: float = Field(
        60.0,
        description="Total time one response may take: connect, headers and the whole body. A "
        "response past it (a body sent a byte at a time) is cut off and retried like a timeout.",
        gt=0,
    )
    retry_max_attempts: int = Field(
        6, description="Attempts per page, the first one included.", ge=1, le=50
    )
    retry_backoff_base_seconds: float = Field(
        0.5,
        description="Ceiling of the first backoff delay, doubling per attempt up to "
        "RETRY_BACKOFF_MAX_SECONDS, with equal jitter: a delay is half its ceiling plus a random "
        "share of the other half.",
        ge=0,
    )
    retry_backoff_max_seconds: float = Field(30.0, description="Cap on one backoff delay.", ge=0)
    retry_after_max_seconds: float = Field(
        60.0,
        description="Cap on the wait a server's Retry-After asks for: a longer one is cut to "
        "this and the page is retried after it.",
        ge=0,
    )
    fetch_range_retries: int = Field(
        2,
        description="Retries of a page range (one fetch task) that failed for a cause that can "
        "clear by itself (its pages out of attempts on 5xx, 429, timeouts); the range alone is "
        "fetched again, after FETCH_RANGE_RETRY_DELAY_SECONDS.",
        ge=0,
        le=10,
    )
    fetch_range_retry_delay_seconds: float = Field(
        60.0,
        description="Wait before a failed page range is fetched again: long enough for a short "
        "outage or a rate-limit window to pass.",
        ge=0,
    )
    data_lake_dir: Path = Field(Path("./data_lake"), description="Root of the Parquet lake.")
    duckdb_path: Path = Field(Path("./db/faker.duckdb"), description="DuckDB database file.")
    gx_dir: Path | None = Field(
        None,
        description="Great Expectations folder: the Data Docs site (`data_docs/index.html`) and "
        "the counts-only validation results it is rendered from. Unset: `gx` beside the lake "
        "(in DATA_LAKE_DIR's parent folder).",
    )
    duckdb_lock_timeout_seconds: float = Field(
        600.0,
        description="How long a run waits for another run's DuckDB writes (one writer per file).",
        gt=0,
    )
    duckdb_limit_name: str = Field(
        "faker-duckdb",
        description="Prefect global concurrency limit of one slot that a process holds while it "
        "has the DuckDB file open (one process per file), across hosts; created by `make serve` "
        "and the compose worker. Without it on the server, the file lock alone decides. One "
        "name per DuckDB file: pipelines of different files on one server need different names.",
    )
    cli_prefect_server: Literal["background", "temporary"] | None = Field(
        None,
        description="Which Prefect server a CLI run without PREFECT_API_URL uses: `background` "
        "starts the local server and keeps it for later runs (`make run` sets it), `temporary` "
        "always uses Prefect's per-process server; unset: the running local server, else the "
        "temporary one.",
    )
    prefect_server_ephemeral_startup_timeout_seconds: int = Field(
        180,
        description="Seconds a CLI run gives Prefect's temporary API server to start (Prefect's "
        "own variable: its default, 20, is missed on a busy machine; see `start-up: Prefect "
        "first run s` in bench/results.md).",
        ge=1,
    )

    @field_validator("cli_prefect_server", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # `CLI_PREFECT_SERVER=` (as in a copied .env.example) means unset, as it always has.
        return (value.strip().lower() or None) if isinstance(value, str) else value

    schema_drift_policy: Literal["additive", "fail", "ignore"] = Field(
        "additive",
        description="When the source's shape differs from the last successful run: `additive` "
        "continues if fields were only added and fails otherwise, `fail` fails on any change, "
        "`ignore` only reports it. Required fields missing or retyped always fail.",
    )
    backfill_max_days: int = Field(
        366, description="Longest date range one backfill may cover.", ge=1
    )
    task_runner: RunnerKind = Field(
        "threads",
        description="How a run's tasks run: `threads` (a thread pool in the flow's process) or "
        "`dask` (DASK_ADDRESS, else a local cluster of DASK_WORKERS processes; needs the `dask` "
        "extra).",
    )
    dask_address: str | None = Field(
        None,
        description="Scheduler of an existing Dask cluster (tls://host:8786); unset: a local "
        "cluster. A tcp:// or bare address is refused unless DASK_TRUSTED_NETWORK is true.",
    )
    dask_workers: int = Field(
        2, description="Worker processes of the local Dask cluster (no DASK_ADDRESS).", ge=1
    )
    dask_allow_spill: bool = Field(
        False,
        description="Let Dask workers spill task results (masked rows, hashes of raw values) to "
        "their scratch directory; off, nothing a run holds is written there.",
    )
    dask_trusted_network: bool = Field(
        False,
        description="Accept a DASK_ADDRESS that is not tls://: batches then cross the network "
        "unencrypted.",
    )
    flow_timeout_seconds: int = Field(
        3600,
        description="A pipeline run that takes longer is stopped and fails (the deployments, and "
        "a CLI run unless --deadline-seconds says otherwise). An hour covers the largest planned "
        "run under the public API's rate limit and stops a hung one before the next schedule.",
        ge=MIN_DEADLINE_SECONDS,
    )
    backfill_timeout_seconds: int = Field(
        86_400,
        description="The same for a range backfill, all its dates one after another.",
        ge=MIN_DEADLINE_SECONDS,
    )
    privacy_k: int = Field(
        5,
        description="k of k-anonymity: smallest acceptable class in the shareable extract; "
        "published counts below it show as `<k`; rarer email domains become `other`.",
        ge=2,
        le=1000,
    )
    privacy_quasi_identifiers: str = Field(
        "age_group,gender,country,email_domain",
        description="Comma-separated quasi-identifiers for the re-identification risk figures.",
    )
    pii_hash_key: SecretStr | None = Field(
        None,
        description="HMAC-SHA-256 key for person_key pseudonyms (>= 16 characters): from the "
        "environment, `.env`, or a file secret named pii_hash_key in SECRETS_DIR (default "
        "/run/secrets) or named by PII_HASH_KEY_FILE.",
    )
    pii_hash_key_block: str | None = Field(
        None, description="Name of a Prefect Secret block holding the HMAC key, if not in env."
    )
    browser_path: Path | None = Field(
        None,
        description="Chrome/Chromium executable that renders the report's chart images; unset: "
        "searched (chromium, google-chrome, kaleido's download). A path that is not an "
        "executable means no chart images.",
    )
    charts_allow_browser_download: bool = Field(
        False,
        description="With no browser found, let kaleido download Chrome for Testing from the "
        "internet; off: the report is published without chart images.",
    )

    @field_validator("browser_path", mode="before")
    @classmethod
    def _blank_path_is_unset(cls, value: Any) -> Any:
        # `BROWSER_PATH=` (as in a copied .env.example) means unset, not the working directory.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("privacy_quasi_identifiers")
    @classmethod
    def _known_columns(cls, value: str) -> str:
        from tasks.common.schemas import ANALYTICAL_SCHEMA

        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = sorted(set(names) - set(ANALYTICAL_SCHEMA.names) - {"person_key", "run_date"})
        if not names or unknown or {"person_key", "run_date"} & set(names):
            raise ValueError(
                f"quasi-identifiers must be analytical columns such as age_group, gender, "
                f"country, country_code, email_domain (got {value!r})"
            )
        return ",".join(names)

    @property
    def quasi_identifiers(self) -> tuple[str, ...]:
        """PRIVACY_QUASI_IDENTIFIERS as a tuple."""
        return tuple(self.privacy_quasi_identifiers.split(","))

    @field_validator("faker_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        from tasks.common.inputs import check_api_url

        return check_api_url(value)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once; a bad value is an InputError naming it in one line.

    One line for every caller: the CLI prints it, and a deployment's run fails with it instead of
    a library error whose message is withheld (pydantic's quotes the values).
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise InputError(settings_error_line(exc)) from None
