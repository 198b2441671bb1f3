"""Checks on what a user types (flags, parameters, env), run before any request or write."""

from __future__ import annotations

import datetime as dt
import re
import socket
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from tasks.common.errors import PipelineError, display_url

# The bounds of every input, here and nowhere else (settings and flow parameters use them).
MAX_PAGE_SIZE = 1000  # the API clamps larger requests to 1000 without saying so
MAX_RECORDS = 10_000_000
MAX_SEED = 2**31 - 1  # the API's seeds are 32-bit; 0 means "no seed" there
MIN_DEADLINE_SECONDS = 1  # a run's timeout: FLOW_/BACKFILL_TIMEOUT_SECONDS, --deadline-seconds
# The API's birthdays start here, and a run asks for persons born by its date.
EARLIEST_RUN_DATE = dt.date(1900, 1, 1)
# A setting whose name holds one of these may carry a secret: its value is never echoed.
SECRET_NAME_PARTS = ("URL", "KEY", "SECRET", "PASSWORD", "TOKEN")
# YYYY-MM-DD with a month and day in range: the run date's format, in parse_run_date and in the
# flows' parameter schema (where Prefect checks it when a run is created).
RUN_DATE_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"
_ISO_DATE = re.compile(RUN_DATE_PATTERN)


# Flow parameters and RunOptions fields with their bounds, each taken from the constants above.
# The bounds are JSON-schema keywords, not pydantic constraints: Prefect shows them in the run
# form and refuses a deployment run created against them (deployments enforce their parameter
# schema), while a direct call or a CLI run is checked by check_* and parse_run_date, whose
# one-line errors name the value.
Records = Annotated[
    int | None,
    Field(
        description=f"Records to fetch, 1..{MAX_RECORDS:,}.",
        json_schema_extra={"minimum": 1, "maximum": MAX_RECORDS},
    ),
]
PageSize = Annotated[
    int | None,
    Field(
        description=f"Records per request, 1..{MAX_PAGE_SIZE} (the API clamps above).",
        json_schema_extra={"minimum": 1, "maximum": MAX_PAGE_SIZE},
    ),
]
Seed = Annotated[
    int | None,
    Field(
        description=f"Run seed, 1..{MAX_SEED}; unset: derived from the run date.",
        json_schema_extra={"minimum": 1, "maximum": MAX_SEED},
    ),
]
RunDate = Annotated[dt.date, Field(json_schema_extra={"pattern": RUN_DATE_PATTERN})]


class RunOptions(BaseModel):
    """A run's options, declared once: flow parameters, CLI flags and the backfill's options.

    Unset (None) means the setting of the same name (FAKER_API_URL, FAKER_RECORDS, ...). Values
    are checked by `tasks.common.run_config.resolve_run_config`, which names a bad one.
    """

    model_config = ConfigDict(frozen=True)

    api_url: str | None = Field(None, description="Faker API base URL, up to the version.")
    records: Records = None
    page_size: PageSize = None
    seed: Seed = None
    locale: str | None = Field(None, description="Faker locale, e.g. en_US.")


class InputError(PipelineError, ValueError):
    """A user-supplied value is unusable; the message names the value (URLs without credentials)."""


def check_api_url(url: str) -> str:
    """Return a plain http(s) base URL without its trailing slash; refuse any other.

    Credentials and query strings are refused rather than stripped: the URL is a flow run's
    parameter, which the Prefect UI shows to whoever opens the run, and a query string would
    sit before the `/persons` the fetch appends.
    """
    text = url.strip()
    shown = display_url(text)
    if "@" in text:
        raise InputError(
            f"api_url {shown!r} carries credentials (user info before '@'), which a run would "
            "keep in its parameters: give the URL without them (credentials in the URL are not "
            "supported; an API that needs them can be reached through a proxy that adds them)"
        )
    if "?" in text or "#" in text:
        raise InputError(
            f"api_url {shown!r} has a query string or fragment: give the base URL up to the "
            "version (…/api/v2) without '?' or '#'; the pipeline sets the request's parameters"
        )
    try:
        parts = urlsplit(text)
        plain = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number in range, an unclosed "["
        plain = False
    if not plain:
        raise InputError(f"api_url {shown!r} is not an http(s) URL with a host")
    return text.rstrip("/")


def check_records(records: int) -> int:
    """Records must be a positive count we can hold in a day's batch."""
    if not 1 <= records <= MAX_RECORDS:
        raise InputError(f"records={records} must be between 1 and {MAX_RECORDS:,}")
    return records


def check_seed(seed: int | None) -> int | None:
    """A run seed is 1..MAX_SEED, or None for one derived from the run date."""
    if seed is not None and not 1 <= seed <= MAX_SEED:
        raise InputError(f"seed={seed} must be between 1 and {MAX_SEED} (0 means 'no seed')")
    return seed


def check_page_size(page_size: int) -> int:
    """Page size must be 1..1000: above 1000 the API would silently return fewer records."""
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InputError(f"page_size={page_size} must be between 1 and {MAX_PAGE_SIZE}")
    return page_size


def default_run_date(scheduled_start: dt.datetime | None, today: dt.date | None = None) -> dt.date:
    """The date a run without run_date loads: its scheduled start's UTC date, else today (UTC).

    A deployment run picked up late (a worker down for days) loads the date it was scheduled
    for, not the day it runs; a run without a scheduled time (a flow called directly) loads today.
    """
    if scheduled_start is None:
        return today or dt.datetime.now(dt.UTC).date()
    if scheduled_start.tzinfo is None:  # Prefect's times are UTC; a naive one is read as UTC
        return scheduled_start.date()
    # The date in UTC whatever the zone of the server, the worker or the schedule.
    return scheduled_start.astimezone(dt.UTC).date()


def parse_run_date(value: str | dt.date | None, today: dt.date | None = None) -> dt.date:
    """Parse YYYY-MM-DD (default: today, UTC); a future date is refused, ages would be negative."""
    today = today or dt.datetime.now(dt.UTC).date()
    if value is None:
        return today
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        parsed = value
    else:
        # Only YYYY-MM-DD: fromisoformat also takes week dates (2026-W47-5) and compact forms.
        text = value.strip()
        try:
            if not _ISO_DATE.fullmatch(text):
                raise ValueError
            parsed = dt.date.fromisoformat(text)
        except ValueError:
            raise InputError(f"run_date {value!r} is not a date in YYYY-MM-DD form") from None
    if parsed > today:
        raise InputError(f"run_date {parsed.isoformat()} is in the future (today is {today})")
    if parsed < EARLIEST_RUN_DATE:
        raise InputError(
            f"run_date {parsed.isoformat()} is before {EARLIEST_RUN_DATE}, where the API's "
            f"birthdays start: give a date from {EARLIEST_RUN_DATE} on"
        )
    return parsed


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Open (and close) a TCP connection to the API host, so a dead URL fails before any work."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise InputError(
            f"api_url {display_url(url)!r} is unreachable ({host}:{port}: {reason})"
        ) from None


def date_range(start: dt.date | str, end: dt.date | str, max_days: int) -> list[dt.date]:
    """Every date from start to end inclusive; refuses backward, future or overlong ranges."""
    first, last = parse_run_date(start), parse_run_date(end)
    if last < first:
        raise InputError(f"date range is backwards: end {last} is before start {first}")
    days = (last - first).days + 1
    if days > max_days:
        raise InputError(
            f"date range {first}..{last} covers {days} days, more than {max_days} "
            "(BACKFILL_MAX_DAYS)"
        )
    return [first + dt.timedelta(days=i) for i in range(days)]


def settings_error_line(exc: Exception) -> str:
    """One line naming each bad setting by its environment variable; a value is echoed only
    where the name says it cannot be a secret (SECRET_NAME_PARTS)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).strip().splitlines()[0]
    parts = []
    for error in errors():
        name = str(error["loc"][0]).upper() if error.get("loc") else "settings"
        # Without a field, the input is every setting at once, secrets included.
        secret = name == "settings" or any(part in name for part in SECRET_NAME_PARTS)
        shown = "" if secret else f" (got {error.get('input')!r})"
        parts.append(f"{name}{shown}: {error['msg']}")
    return "invalid setting " + "; ".join(parts)
