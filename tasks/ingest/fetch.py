"""Fetching pages of persons from the Faker API: one pooled client, bounded concurrency, retries."""

from __future__ import annotations

import contextvars
import datetime as dt
import email.utils
import random
import ssl
import threading
import time
import urllib.request
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
    httpcore timeout, which _DeadlineTransport reports as httpx's) when none is left."""
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
        return _connected(lambda t: self._inner.start_tls(ssl_context, server_hostname, t), timeout)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _connected(
    connect: Callable[[float | None], httpcore.NetworkStream], timeout: float | None
) -> _DeadlineStream:
    """A connection (or TLS upgrade) made within the deadline, its reads and writes bound too."""
    return _DeadlineStream(_bounded(connect, timeout, httpcore.ConnectTimeout))


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
        return _connected(
            lambda t: self._inner.connect_tcp(host, port, t, local_address, socket_options), timeout
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _connected(
            lambda t: self._inner.connect_unix_socket(path, t, socket_options), timeout
        )

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


# httpcore's errors as httpx's, most specific first (the first match wins): what httpx's own
# transport raises, so the handlers in _get_body see the same errors.
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    """Re-raise an httpcore error from the block as its httpx counterpart, for `request`."""
    try:
        yield
    except Exception as exc:
        for core_error, httpx_error in _HTTPX_ERRORS:
            if isinstance(exc, core_error):
                raise httpx_error(str(exc), request=request) from exc
        raise


class _ResponseStream(httpx.SyncByteStream):
    """An httpcore response's body as httpx reads it, with httpx's errors."""

    def __init__(self, response: httpcore.Response, request: httpx.Request) -> None:
        self.response = response
        self.request = request

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors(self.request):
            yield from self.response.iter_stream()

    def close(self) -> None:
        self.response.close()  # back to the pool, or closed if the body was not read to its end


class _DeadlineTransport(httpx.BaseTransport):
    """httpx's transport over an httpcore pool whose every connection keeps the response deadline.

    httpx has no total timeout: its timeouts bound each socket operation, so a server that
    sends a byte before each read timeout runs out keeps a response going for ever. httpcore
    lets a pool take its own network backend; _DeadlineBackend cuts every connect, read and
    write to the time the response has left. Decoding, redirects and timeouts per operation
    stay httpx's (the timeouts travel in the request's extensions)."""

    def __init__(self, limits: httpx.Limits, proxy: str | None) -> None:
        self.pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            proxy=None if proxy is None else _httpcore_proxy(proxy),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_DeadlineBackend(httpcore.SyncBackend()),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` on the pool; the response's body is read as the caller iterates it."""
        if not isinstance(request.stream, httpx.SyncByteStream):
            raise TypeError("an async request on a sync transport")
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors(request):
            response = self.pool.handle_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response, request),
            extensions=response.extensions,
        )

    def close(self) -> None:
        """Close the pool's connections."""
        self.pool.close()


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY), unless
    NO_PROXY exempts its host: the proxies httpx would take from the environment itself."""
    target = httpx.URL(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(target.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(target.host):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _httpcore_proxy(url: str) -> httpcore.Proxy:
    """httpcore's proxy for `url`, credentials in the URL sent as Proxy-Authorization."""
    proxy = httpx.Proxy(url)
    return httpcore.Proxy(
        url=httpcore.URL(
            scheme=proxy.url.raw_scheme,
            host=proxy.url.raw_host,
            port=proxy.url.port,
            target=proxy.url.raw_path,
        ),
        auth=proxy.raw_auth,
        headers=proxy.headers.raw,
        ssl_context=proxy.ssl_context,
    )


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
    pool: httpcore.ConnectionPool
    gate: threading.BoundedSemaphore
    limiter: RateLimiter
    users: int = field(default=0)


_transports: dict[tuple[int, int, float, float, str | None], _Transport] = {}
_transports_lock = threading.Lock()


def _transport(config: FetchConfig) -> _Transport:
    """The process-wide pooled client for this config: connections are reused across tasks."""
    proxy = _proxy_for(config.api_url)
    key = (
        config.concurrency,
        config.requests_per_minute,
        config.connect_timeout,
        config.read_timeout,
        proxy,
    )
    with _transports_lock:
        transport = _transports.get(key)
        if transport is None:
            limits = httpx.Limits(
                max_connections=config.concurrency,
                max_keepalive_connections=config.concurrency,
            )
            http = _DeadlineTransport(limits, proxy)
            client = httpx.Client(
                transport=http,
                timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
                # gzip only: the one encoding read_body inflates in bounded steps.
                headers={
                    "User-Agent": "faker-api-dataflow",
                    "Accept": "application/json",
                    "Accept-Encoding": "gzip",
                },
                # A redirect is refused, never followed (see _check_status).
                follow_redirects=False,
            )
            transport = _Transport(
                client=client,
                pool=http.pool,
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
    run_left = run_time_left(config)
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


def run_time_left(config: FetchConfig) -> float | None:
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
            run_left = run_time_left(config)
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
