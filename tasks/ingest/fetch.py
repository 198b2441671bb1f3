"""Fetching pages of persons from the Faker API: one pooled client, bounded concurrency, retries."""

from __future__ import annotations

import contextvars
import datetime as dt
import email.utils
import random
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import httpcore
import httpx
import orjson
import pyarrow as pa

from tasks.common.errors import PipelineError, display_url
from tasks.common.handoff import HandsOverTable
from tasks.common.logs import run_logger
from tasks.common.run_config import FetchConfig
from tasks.ingest.columnar import typed_page
from tasks.ingest.limits import (
    MAX_JSON_DEPTH,
    EncodingError,
    LimitExceededError,
    nesting_depth,
    read_body,
)
from tasks.ingest.plan import Page, PageRange
from tasks.ingest.source_schema import to_source_table

Sleep = Callable[[float], None]


class FetchError(PipelineError):
    """A page could not be fetched; the message names the page and the last cause."""


class SourcePage(NamedTuple):
    """One page's raw records as typed columns (SOURCE_SCHEMA, memory only) and its signature."""

    table: pa.Table
    signature: str


@dataclass
class FetchedRange(HandsOverTable):
    """A range's raw records as one Arrow table (memory only) plus what it cost to get them."""

    table: pa.Table | None
    pages: int
    attempts: int
    signatures: set[str]

    @property
    def retries(self) -> int:
        """Attempts beyond the first, over all pages of the range."""
        return self.attempts - self.pages


class RateLimiter:
    """Spaces requests evenly so a run stays within a requests-per-minute budget, across threads."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self, sleep: Sleep = time.sleep) -> None:
        """Wait for this caller's slot."""
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            sleep(slot - now)


@dataclass
class _Deadline:
    """When the response in flight on this thread must be complete (monotonic seconds)."""

    at: float
    hit: bool = False  # a socket operation ran out of time because of it


_deadline: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar(
    "response_deadline", default=None
)
T = TypeVar("T")


def _bounded(op: Callable[[float | None], T], timeout: float | None, expired: type[Exception]) -> T:
    """Run one socket operation with min(its timeout, the thread's time left); `expired` (an
    httpcore timeout, so httpx reports it as one) when none is left."""
    deadline = _deadline.get()
    if deadline is None:
        return op(timeout)
    left = deadline.at - time.monotonic()
    if left <= 0:
        deadline.hit = True
        raise expired("response deadline exceeded")
    if timeout is not None and timeout <= left:
        return op(timeout)
    try:
        return op(left)
    except httpcore.TimeoutException:
        deadline.hit = True
        raise


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write waits no longer than the response's deadline.

    httpx timeouts are per socket operation: a body sent a byte at a time never trips one. Each
    operation here gets min(its own timeout, time left), so no single read outlasts the deadline
    whatever pace the server keeps, in the headers as much as in the body."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return _bounded(lambda t: self._inner.read(max_bytes, t), timeout, httpcore.ReadTimeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        _bounded(lambda t: self._inner.write(buffer, t), timeout, httpcore.WriteTimeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = _bounded(
            lambda t: self._inner.start_tls(ssl_context, server_hostname, t),
            timeout,
            httpcore.ConnectTimeout,
        )
        return _DeadlineStream(stream)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend with every connection a _DeadlineStream."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = _bounded(
            lambda t: self._inner.connect_tcp(host, port, t, local_address, socket_options),
            timeout,
            httpcore.ConnectTimeout,
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = _bounded(
            lambda t: self._inner.connect_unix_socket(path, t, socket_options),
            timeout,
            httpcore.ConnectTimeout,
        )
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _enforce_deadlines(client: httpx.Client) -> None:
    """Put every connection pool of `client` (direct, and any proxy's from the environment) on
    _DeadlineBackend. httpx has no total timeout nor a public hook below the socket reads, so
    this reaches into its pools; if a new httpx or httpcore lays them out otherwise, creating
    the client fails here instead of fetching without a deadline."""
    for transport in (client._transport, *client._mounts.values()):
        if transport is None:  # a mount that turns proxying off for some hosts
            continue
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if pool is None or not isinstance(backend, httpcore.NetworkBackend):
            raise RuntimeError(
                "this httpx/httpcore version keeps its connection pool elsewhere: the "
                "per-response deadline cannot be enforced (tasks/ingest/fetch.py)"
            )
        if not isinstance(backend, _DeadlineBackend):
            pool._network_backend = _DeadlineBackend(backend)


@contextmanager
def _response_deadline(seconds: float) -> Iterator[_Deadline]:
    """Every socket operation on this thread within the block ends by `seconds` from now."""
    deadline = _Deadline(time.monotonic() + seconds)
    token = _deadline.set(deadline)
    try:
        yield deadline
    finally:
        _deadline.reset(token)


@dataclass
class _Transport:
    client: httpx.Client
    gate: threading.BoundedSemaphore
    limiter: RateLimiter
    users: int = field(default=0)


_transports: dict[tuple[int, int, float, float], _Transport] = {}
_transports_lock = threading.Lock()


def _transport(config: FetchConfig) -> _Transport:
    """The process-wide pooled client for this config: connections are reused across tasks."""
    key = (
        config.concurrency,
        config.requests_per_minute,
        config.connect_timeout,
        config.read_timeout,
    )
    with _transports_lock:
        transport = _transports.get(key)
        if transport is None:
            client = httpx.Client(
                timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
                limits=httpx.Limits(
                    max_connections=config.concurrency,
                    max_keepalive_connections=config.concurrency,
                ),
                # gzip only: the one encoding read_body inflates in bounded steps.
                headers={
                    "User-Agent": "faker-api-dataflow",
                    "Accept": "application/json",
                    "Accept-Encoding": "gzip",
                },
                # A redirect is refused, never followed (see _check_status).
                follow_redirects=False,
            )
            _enforce_deadlines(client)
            transport = _Transport(
                client=client,
                gate=threading.BoundedSemaphore(config.concurrency),
                limiter=RateLimiter(config.requests_per_minute),
            )
            _transports[key] = transport
        return transport


def close_clients() -> None:
    """Close the pooled clients (end of a run, or tests)."""
    with _transports_lock:
        for transport in _transports.values():
            transport.client.close()
        _transports.clear()


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Parse a Retry-After header given in seconds or as an HTTP date; None if absent or junk."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_seconds(attempt: int, config: FetchConfig, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, capped."""
    ceiling = min(config.backoff_max, config.backoff_base * 2 ** (attempt - 1))
    return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


class _Retryable(Exception):
    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


def _params(page: Page, config: FetchConfig) -> dict[str, str | int]:
    params: dict[str, str | int] = {
        "_quantity": page.quantity,
        "_seed": page.seed,
        "_locale": config.locale,
    }
    if config.birthday_end:
        params["_birthday_start"] = "1900-01-01"
        params["_birthday_end"] = config.birthday_end
    return params


def _fatal(page: Page, url: str, what: str, advice: str) -> FetchError:
    """A page failure no retry can fix, naming the page and the URL (never its credentials)."""
    return FetchError(
        f"page {page.index}: {what} from {display_url(url)} (not retryable: {advice})"
    )


def _check_status(response: httpx.Response, url: str, page: Page) -> None:
    status = response.status_code
    if status == 429 or status >= 500:
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        # The body's `message` is the source's own text (one held an e-mail and a phone
        # number): the status says what happened, and the body is never read.
        raise _Retryable(f"HTTP {status}", retry_after)
    if 300 <= status < 400:
        # Following would send the page's request wherever the source says; Location is the
        # source's text (it may hold credentials), so it is not quoted either.
        raise _fatal(
            page,
            url,
            f"HTTP {status} redirect",
            "redirects are not followed: set the API URL to the address it redirects to",
        )
    if status != 200:
        raise _fatal(page, url, f"HTTP {status}", "check the URL and parameters")


def _get_body(
    client: httpx.Client, url: str, page: Page, params: dict[str, str | int], config: FetchConfig
) -> bytes:
    """The page's 200 body, read within the size and nesting limits and the response deadline."""
    limit = config.response_deadline
    run_left = _run_time_left(config)
    if run_left is not None:
        if run_left <= 0:
            raise _run_over(page)
        limit = min(limit, run_left)
    with _response_deadline(limit) as deadline:
        try:
            with client.stream("GET", url, params=params) as response:
                _check_status(response, url, page)
                body = read_body(response)
            if nesting_depth(body) > MAX_JSON_DEPTH:
                raise LimitExceededError(f"the JSON nesting limit of {MAX_JSON_DEPTH} levels")
            return body
        except httpx.TimeoutException as exc:
            if not deadline.hit:
                raise _Retryable(f"timeout ({type(exc).__name__})") from None
            if limit < config.response_deadline:
                raise _run_over(page) from None
            raise _Retryable(
                f"response deadline {config.response_deadline:g}s exceeded "
                "(FETCH_RESPONSE_DEADLINE_SECONDS)"
            ) from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error ({type(exc).__name__})") from None
        except zlib.error:
            raise _Retryable("truncated or corrupt gzip body") from None
        except LimitExceededError as exc:
            # Not retried: a seeded request gets the same answer again, a valid page is a quarter
            # of either limit or less, and each retry would cost us what a hostile source chose
            # again. Only a person can judge the source (or the limit).
            raise _fatal(
                page, url, f"response over {exc}", "a valid page is a quarter of it or less"
            ) from None
        except EncodingError:
            raise _fatal(
                page, url, "response compressed other than with gzip", "only gzip is asked for"
            ) from None


def _run_time_left(config: FetchConfig) -> float | None:
    """Seconds until the run's own deadline, if it has one."""
    return None if config.run_deadline is None else config.run_deadline - time.time()


def _run_over(page: Page) -> FetchError:
    """The run reached its deadline: the flow run is stopping, so the page is not retried."""
    return FetchError(f"page {page.index}: not fetched: the run reached its deadline")


def _attempt(client: httpx.Client, url: str, page: Page, config: FetchConfig) -> SourcePage:
    body = _get_body(client, url, page, _params(page, config), config)
    fast = typed_page(body, page.quantity)
    if fast is not None:  # the page keeps the contract: columns straight from the bytes
        return SourcePage(*fast)
    # Anything else takes the general path, which says what is wrong with the page.
    try:
        # orjson (already installed with Prefect) parses a page faster than the json module.
        payload = orjson.loads(body)
    except ValueError:  # orjson.JSONDecodeError is a ValueError
        raise _Retryable("truncated or non-JSON body") from None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise _Retryable("response has no `data` list")
    if len(data) != page.quantity:
        # The API clamps and may come back short; a short page is retried, never accepted.
        raise _Retryable(f"short page: got {len(data)} of {page.quantity} records")
    return SourcePage(*to_source_table(data, page.index))


def _wait_for_slot(config: FetchConfig, transport: _Transport, sleep: Sleep) -> None:
    """A request's place in the budget: the run's shared Prefect limit, else this process's."""
    if config.rate_limit_name:
        from prefect.concurrency.sync import rate_limit

        # strict: the run checked the limit exists; if it went away, fail loudly, not unlimited.
        rate_limit(config.rate_limit_name, occupy=1, strict=True)
    else:
        transport.limiter.acquire(sleep)


def fetch_page(
    config: FetchConfig,
    page: Page,
    *,
    sleep: Sleep = time.sleep,
    rng: random.Random | None = None,
) -> tuple[SourcePage, int]:
    """Fetch one page with retries; returns its typed columns and the attempts it took.

    A page whose fields are not what the contract says raises SchemaDriftError at once: the
    same request would get the same page again."""
    transport = _transport(config)
    rng = rng or random.Random()
    url = f"{config.api_url}/persons"
    cause = "no attempt made"
    for attempt in range(1, config.max_attempts + 1):
        _wait_for_slot(config, transport, sleep)
        try:
            with transport.gate:
                return _attempt(transport.client, url, page, config), attempt
        except _Retryable as exc:
            cause = exc.cause
            if attempt == config.max_attempts:
                break
            delay = (
                min(exc.retry_after, config.retry_after_max)
                if exc.retry_after is not None
                else backoff_seconds(attempt, config, rng)
            )
            run_left = _run_time_left(config)
            if run_left is not None and run_left <= delay:
                raise _run_over(page) from None
            # The run's logger: retries show in the flow run's logs in the UI.
            run_logger(__name__).warning(
                "page %d attempt %d/%d: %s; retrying in %.2fs",
                page.index,
                attempt,
                config.max_attempts,
                cause,
                delay,
            )
            sleep(delay)
    # Every cause above is one that can clear by itself (rate limits, 5xx, timeouts, broken
    # bodies): a later run, or the flow's own retry, may well succeed.
    raise FetchError(
        f"page {page.index} failed after {config.max_attempts} attempts; last cause: {cause}",
        transient=True,
    )


def fetch_range(
    config: FetchConfig,
    page_range: PageRange,
    *,
    sleep: Sleep = time.sleep,
    rng: random.Random | None = None,
) -> FetchedRange:
    """Fetch every page of a range and turn the records into one Arrow table (never persisted)."""
    tables, attempts, signatures = [], 0, set()
    for page in page_range.pages:
        fetched, used = fetch_page(config, page, sleep=sleep, rng=rng)
        attempts += used
        signatures.add(fetched.signature)
        tables.append(fetched.table)
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return FetchedRange(
        table=table, pages=len(page_range.pages), attempts=attempts, signatures=signatures
    )
