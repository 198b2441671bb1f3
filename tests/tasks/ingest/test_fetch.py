"""Fetching against the real local API with injected faults; sleeps are recorded, not slept."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import http.server
import logging
import random
import threading
import time
import tracemalloc

import httpx
import pytest

from local_api.pools import SUPPORTED_LOCALES, get_pools
from local_api.server import REPLAY_HEADER
from tasks.ingest.fetch import (
    FetchConfig,
    FetchError,
    RateLimiter,
    backoff_seconds,
    close_clients,
    fetch_page,
    fetch_range,
    retry_after_seconds,
)
from tasks.ingest.limits import MAX_BODY_BYTES, MAX_JSON_DEPTH, nesting_depth
from tasks.ingest.plan import group_ranges, plan_pages
from tasks.ingest.source_schema import SchemaDriftError

KEY = b"test-page-seed-key-0123456789abcdef"  # page seeds are an HMAC under a key of their own


@pytest.fixture(autouse=True)
def _fresh_clients():
    yield
    close_clients()


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def config(server, **over) -> FetchConfig:
    base = {"api_url": server.base_url, "max_attempts": 5, "backoff_base": 0.01, "read_timeout": 2}
    return FetchConfig(**{**base, **over})


def fetch_all(cfg: FetchConfig, records: int, page_size: int, sleeps=None):
    pages = plan_pages(records, page_size, run_seed=11, key=KEY)
    ranges = group_ranges(pages, 4)
    results = [
        fetch_range(cfg, r, sleep=Sleeps() if sleeps is None else sleeps, rng=random.Random(0))
        for r in ranges
    ]
    return results


def test_clean_fetch_is_complete_and_typed(api):
    results = fetch_all(config(api), records=2500, page_size=1000)
    assert sum(r.table.num_rows for r in results) == 2500
    assert sum(r.retries for r in results) == 0
    assert all(r.signatures for r in results)
    assert api.stats()["total"] == 3


@pytest.mark.parametrize(
    "faults",
    [
        {"fail_first": 2},
        {"fail_first": 2, "error_statuses": (502, 503)},
        {"fail_first": 1, "truncate_rate": 0.0, "error_statuses": (500,)},
        {"truncate_rate": 0.5, "fault_seed": 3},
        {"truncate_rate": 0.5, "truncate_mode": "connection", "fault_seed": 3},
        {"reset_rate": 0.4, "fault_seed": 5},
        {"short_rate": 0.5, "fault_seed": 7},
        {"error_rate": 0.3, "error_statuses": (500, 502, 503), "fault_seed": 9},
        {"hang_rate": 0.3, "hang_seconds": 3, "fault_seed": 1},
        # Bodies gzipped to ~1 MiB expanded (under the limit), half of them cut off mid-stream.
        {"gzip_bomb_rate": 1.0, "gzip_bomb_bytes": 1 << 20, "truncate_rate": 0.5, "fault_seed": 3},
    ],
    ids=[
        "fail-first-500",
        "fail-first-502-503",
        "one-500",
        "truncated-json",
        "truncated-connection",
        "connection-reset",
        "short-pages",
        "random-5xx",
        "read-timeouts",
        "truncated-gzip",
    ],
)
def test_retryable_faults_recover_to_exactly_the_records(start_api, faults):
    server = start_api(**faults)
    cfg = config(server, read_timeout=1.0, max_attempts=8)
    sleeps = Sleeps()
    results = fetch_all(cfg, records=1234, page_size=100, sleeps=sleeps)
    assert sum(r.table.num_rows for r in results) == 1234
    assert sum(r.retries for r in results) == len(sleeps) > 0


def test_clean_and_faulty_runs_give_identical_records(start_api):
    clean = fetch_all(config(start_api()), records=300, page_size=100)
    faulty = fetch_all(config(start_api(fail_first=1)), records=300, page_size=100)
    assert [r.table for r in clean] == [r.table for r in faulty]


@pytest.mark.parametrize("fmt", ["seconds", "http-date"])
def test_retry_after_is_honoured(start_api, fmt):
    server = start_api(rate_limit=1, rate_window=3, retry_after=fmt)
    sleeps = Sleeps()
    cfg = config(server, retry_after_max=60, max_attempts=3)
    page = plan_pages(2, 1, run_seed=1, key=KEY)
    fetch_page(cfg, page[0], sleep=sleeps)
    with pytest.raises(FetchError, match=r"page 1 failed after 3 attempts; last cause: HTTP 429"):
        fetch_page(cfg, page[1], sleep=sleeps)
    # the server asked for about 3 s (an HTTP date rounds to whole seconds)
    assert len(sleeps) == 2
    assert all(1.0 <= s <= 3.5 for s in sleeps), sleeps


def test_retry_after_is_capped(start_api):
    server = start_api(rate_limit=1, rate_window=3600)
    sleeps = Sleeps()
    cfg = config(server, retry_after_max=0.25, max_attempts=2)
    pages = plan_pages(2, 1, run_seed=1, key=KEY)
    fetch_page(cfg, pages[0], sleep=sleeps)
    with pytest.raises(FetchError):
        fetch_page(cfg, pages[1], sleep=sleeps)
    assert sleeps == [0.25]


def test_retry_after_parsing():
    now = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 25 Nov 2026 12:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("Wed, 25 Nov 2026 11:00:00 GMT", now=now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_backoff_grows_with_jitter_and_cap():
    cfg = FetchConfig(api_url="http://x", backoff_base=1.0, backoff_max=8.0)
    rng = random.Random(1)
    delays = [backoff_seconds(a, cfg, rng) for a in range(1, 7)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(8.0, 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(d, 6) for d in delays}) == len(delays)


def test_non_retryable_4xx_fails_at_once(api):
    cfg = config(api, api_url=api.base_url.rsplit("/api/", 1)[0] + "/api/v9")
    sleeps = Sleeps()
    with pytest.raises(FetchError, match=r"page 0: HTTP 404 .*not retryable") as info:
        fetch_page(cfg, plan_pages(5, 5, 1, key=KEY)[0], sleep=sleeps)
    assert sleeps == [] and not info.value.transient  # a deployment run does not retry it
    assert api.stats()["total"] == 1


def test_exhausted_page_names_page_and_cause(start_api):
    server = start_api(down=True)
    sleeps = Sleeps()
    with pytest.raises(
        FetchError, match=r"page 0 failed after 4 attempts; last cause: HTTP 503"
    ) as info:
        fetch_page(config(server, max_attempts=4), plan_pages(5, 5, 1, key=KEY)[0], sleep=sleeps)
    assert len(sleeps) == 3 and info.value.transient  # the API may be back later
    assert server.stats()["total"] == 4


def test_connection_refused_is_retried_then_fails(api):
    url = api.base_url
    api.stop()
    sleeps = Sleeps()
    with pytest.raises(FetchError, match="last cause: connection error"):
        fetch_page(
            config(api, api_url=url, max_attempts=2), plan_pages(1, 1, 1, key=KEY)[0], sleep=sleeps
        )
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    ("drift", "message"),
    [
        ("county_code", r"'address\.country_code' is missing .*address\.county_code"),
        ("missing-email", "'email' is missing"),
        ("wrong-type", "has type"),
    ],
)
def test_schema_drift_names_the_field(start_api, drift, message):
    server = start_api(drift=(drift,))
    with pytest.raises(SchemaDriftError, match=message):
        fetch_all(config(server), records=10, page_size=10)


def test_additive_drift_is_absorbed(start_api):
    server = start_api(drift=("extra-field",))
    (result,) = fetch_all(config(server), records=10, page_size=10)
    assert result.table.num_rows == 10


def test_rate_limiter_spaces_requests():
    clock = [0.0]
    sleeps = Sleeps()
    limiter = RateLimiter(per_minute=30, clock=lambda: clock[0])
    for _ in range(4):
        limiter.acquire(sleep=sleeps)
    assert sleeps == [2.0, 4.0, 6.0]


def test_pooled_client_reuses_connections(api):
    cfg = config(api)
    pages = plan_pages(50, 5, 3, key=KEY)
    for page in pages:
        fetch_page(cfg, page)
    from tasks.ingest.fetch import _transport

    # sequential requests on one pooled client ride a single kept-alive connection
    assert len(_transport(cfg).pool.connections) == 1
    assert api.stats()["total"] == 10


def test_concurrency_bound_holds_at_the_server(start_api):
    # 50 ms per request and twice as many threads as the gate allows: without the gate the server
    # would see up to 8 requests at once.
    server = start_api(latency_ms=50)
    cfg = config(server, concurrency=3)
    pages = plan_pages(16 * 5, 5, run_seed=3, key=KEY)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda page: fetch_page(cfg, page), pages))
    assert [fetched.table.num_rows for fetched, _ in done] == [5] * 16
    stats = server.stats()
    assert stats["total"] == 16
    # Equal to the bound, not just under it: the gate is the limit, not too few threads.
    assert stats["max_in_flight"] == 3


def test_the_apis_own_error_message_is_never_quoted(start_api):
    server = start_api(down=True, error_message="Down for jane.doe@example.org, +14155550123")
    with pytest.raises(FetchError) as info:
        fetch_page(config(server, max_attempts=2), plan_pages(5, 5, 1, key=KEY)[0], sleep=Sleeps())
    assert str(info.value) == "page 0 failed after 2 attempts; last cause: HTTP 503"


# Hostile responses: each is refused on its first answer, within the limits, naming the page
# and the limit, never retried, and never quoting the body or the URL's credentials.
ONE_PAGE = plan_pages(1000, 1000, run_seed=5, key=KEY)[0]


def _refused(server, sleeps: Sleeps, **over) -> FetchError:
    # Credentials in the URL must not reach the message (the local API ignores them).
    url = server.base_url.replace("http://", "http://user:secret@")
    with pytest.raises(FetchError) as info:
        fetch_page(config(server, api_url=url, **over), ONE_PAGE, sleep=sleeps)
    message = str(info.value)
    assert message.startswith("page 0: ") and "not retryable" in message, message
    assert f"from {server.base_url}/persons " in message and "secret" not in message, message
    assert not info.value.transient and sleeps == []
    return info.value


def test_gzip_bomb_is_refused_reading_a_bounded_part(start_api):
    server = start_api(gzip_bomb_rate=1.0)  # ~1 MB on the wire, 1 GiB expanded
    # A first refusal warms what this process serves from (the page's body and the padding's
    # CRC), so the peak below is the fetch plus the ~1 MB bomb the server holds while sending.
    _refused(server, Sleeps())
    tracemalloc.start()
    try:
        error = _refused(server, Sleeps())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"response over the {MAX_BODY_BYTES:,}-byte body limit" in str(error)
    # Measured ~3.7 MiB: the capped body (2 MiB and one 64 KiB step) and the server's bomb. The
    # bound is 1/128 of the expanded body, and an eighth of what inflating one 64 KiB network
    # read at once takes (~63 MiB, as httpx's iter_bytes does).
    assert peak < 4 * MAX_BODY_BYTES, peak
    assert server.stats()["faults"] == {"gzip-bomb": 2} and server.stats()["total"] == 2


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_is_refused_and_never_followed(start_api, status):
    server = start_api(redirect_rate=1.0, redirect_status=status)
    error = _refused(server, Sleeps())
    assert f"page 0: HTTP {status} redirect from " in str(error)
    assert "/moved" not in str(error)  # the Location is the source's text: never quoted
    # The server logs every 200 it answers, the redirect's target included: there is none.
    assert server.served() == []
    assert server.stats()["by_status"] == {str(status): 1}


def test_deep_json_is_refused_before_parsing(start_api):
    server = start_api(deep_json_rate=1.0)  # 900 levels, which orjson alone would accept
    error = _refused(server, Sleeps())
    assert f"response over the JSON nesting limit of {MAX_JSON_DEPTH} levels" in str(error)
    assert server.stats()["faults"] == {"deep-json": 1} and server.stats()["total"] == 1


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_the_largest_valid_pages_pass_the_limits(start_api, locale):
    server = start_api()
    get_pools(locale)  # built on first use, which can outlast the test's read timeout
    fetched, attempts = fetch_page(config(server, locale=locale), ONE_PAGE)
    assert fetched.table.num_rows == 1000 and attempts == 1
    # The body as served (asked for again): ~0.47 MB and 4 levels deep, a quarter of either
    # limit or less, the margin the limits were sized with.
    (served,) = server.served()
    body = httpx.get(
        server.url + served["path"], params=served["params"], headers={REPLAY_HEADER: "1"}
    ).content
    assert len(body) < MAX_BODY_BYTES / 4
    assert nesting_depth(body) == 4 == MAX_JSON_DEPTH / 4


def test_a_gzip_page_under_the_limit_passes(start_api, api):
    # ~1 MiB of whitespace before a real page: gzip, valid JSON, under the limit once expanded.
    server = start_api(gzip_bomb_rate=1.0, gzip_bomb_bytes=1 << 20)
    fetched, attempts = fetch_page(config(server), ONE_PAGE)
    assert attempts == 1 and fetched.table.equals(fetch_page(config(api), ONE_PAGE)[0].table)


# A total deadline per response: a body sent a byte every 0.3 s never trips a read timeout, and
# this one (5 records, ~2.3 KB) would take ~12 minutes.
SMALL_PAGE = plan_pages(5, 5, run_seed=1, key=KEY)[0]


def test_slow_body_is_retried_then_fails_by_its_deadline(start_api, caplog):
    server = start_api(slow_body_rate=1.0, slow_body_seconds=0.3)
    cfg = config(server, response_deadline=1.0, max_attempts=3)
    sleeps = Sleeps()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "tasks.ingest.fetch"), pytest.raises(FetchError) as info:
        fetch_page(cfg, SMALL_PAGE, sleep=sleeps)
    elapsed = time.monotonic() - started
    deadline = "response deadline 1s exceeded (FETCH_RESPONSE_DEADLINE_SECONDS)"
    assert str(info.value) == f"page 0 failed after 3 attempts; last cause: {deadline}"
    assert info.value.transient
    retries = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert [line.split("; retrying")[0] for line in retries] == [
        f"page 0 attempt {n}/3: {deadline}" for n in (1, 2)
    ]
    assert len(sleeps) == 2
    # The server answered each attempt with a slow body, and each was cut off at the deadline:
    # three of them within ~3 s, not the read timeout's pace nor the body's.
    assert server.stats()["faults"] == {"slow-body": 3}
    assert [q["times"] for q in server.served()] == [3]
    assert 3.0 <= elapsed < 6.0, elapsed


def test_body_slow_only_on_the_first_attempt_succeeds_on_retry(start_api, api):
    server = start_api(slow_body_first=1, slow_body_seconds=0.3)
    sleeps = Sleeps()
    fetched, attempts = fetch_page(config(server, response_deadline=1.0), SMALL_PAGE, sleep=sleeps)
    assert attempts == 2 and len(sleeps) == 1
    assert fetched.table.equals(fetch_page(config(api), SMALL_PAGE)[0].table)
    assert server.stats()["faults"] == {"slow-body": 1}


def test_the_deadline_also_bounds_the_wait_for_headers(start_api):
    # A hang before any header, with a read timeout far longer than the deadline.
    server = start_api(hang_rate=1.0, hang_seconds=30)
    cfg = config(server, response_deadline=0.5, read_timeout=20, max_attempts=2)
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"last cause: response deadline 0.5s exceeded"):
        fetch_page(cfg, SMALL_PAGE, sleep=Sleeps())
    assert time.monotonic() - started < 5


def test_the_runs_deadline_stops_a_page_without_retrying(start_api):
    server = start_api(slow_body_rate=1.0, slow_body_seconds=0.3)
    cfg = config(server, response_deadline=60, run_deadline=time.time() + 1.0)
    sleeps = Sleeps()
    with pytest.raises(FetchError) as info:
        fetch_page(cfg, SMALL_PAGE, sleep=sleeps)
    assert str(info.value) == "page 0: not fetched: the run reached its deadline"
    assert sleeps == [] and server.stats()["faults"] == {"slow-body": 1}
    # Past the run's deadline, no request is sent at all.
    with pytest.raises(FetchError, match="the run reached its deadline"):
        fetch_page(cfg, plan_pages(5, 5, run_seed=2, key=KEY)[0], sleep=sleeps)
    assert server.stats()["total"] == 1


# Proxies from the environment, as httpx itself would take them (HTTP_PROXY, NO_PROXY, ...).
@pytest.fixture
def proxy(monkeypatch):
    """A proxy on 127.0.0.1, named in HTTP_PROXY, that records each request line and answers
    503; every other proxy variable is unset."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    lines: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            lines.append(self.requestline)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_port}")
        yield lines
        server.shutdown()


def test_the_environments_proxy_carries_the_request(api, proxy):
    with pytest.raises(FetchError, match=r"last cause: HTTP 503$"):
        fetch_page(config(api, max_attempts=1), SMALL_PAGE)
    # Asked in absolute form, as a client asks a proxy; the API saw nothing directly.
    assert [line.split("?")[0] for line in proxy] == [f"GET {api.base_url}/persons"]
    assert proxy[0].endswith(" HTTP/1.1") and api.stats()["total"] == 0


def test_no_proxy_sends_the_api_host_direct(api, proxy, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    fetched, attempts = fetch_page(config(api, max_attempts=1), SMALL_PAGE)
    assert attempts == 1 and fetched.table.num_rows == 5
    assert proxy == [] and api.stats()["total"] == 1
