"""Each fault flag does what it says, and only on the persons endpoints."""

from __future__ import annotations

import copy
import datetime as dt
import email.utils
import json
import time
import zlib
from collections.abc import Callable

import httpx
import orjson
import pytest

from local_api import FaultConfig, LocalApiServer
from local_api.faults import FUTURE_BIRTHDAY, normalize_drift
from local_api.server import BodyCache

Start = Callable[..., LocalApiServer]


Get = Callable[..., httpx.Response]


@pytest.fixture
def get(http: httpx.Client) -> Get:
    """``get(srv, timeout=5, **params)``: one persons request through the shared client."""

    def _get(srv: LocalApiServer, timeout: float = 5.0, **params: object) -> httpx.Response:
        return http.get(f"{srv.base_url}/persons", params=params, timeout=timeout)

    return _get


def test_rate_limit_seconds(start_server: Start, get: Get) -> None:
    srv = start_server(rate_limit=3, rate_window=60)
    assert [get(srv).status_code for _ in range(3)] == [200, 200, 200]
    limited = get(srv)
    assert limited.status_code == 429
    assert limited.json() == {"message": "Too Many Attempts."}
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert srv.stats()["by_status"] == {"200": 3, "429": 1}


def test_rate_limit_http_date(start_server: Start, get: Get) -> None:
    srv = start_server(rate_limit=1, rate_window=30, retry_after="http-date")
    get(srv)
    limited = get(srv)
    assert limited.status_code == 429
    when = email.utils.parsedate_to_datetime(limited.headers["Retry-After"])
    wait = (when - dt.datetime.now(dt.UTC)).total_seconds()
    assert 0 <= wait <= 31


def test_rate_limit_without_header(start_server: Start, get: Get) -> None:
    srv = start_server(rate_limit=1, retry_after="none")
    get(srv)
    limited = get(srv)
    assert limited.status_code == 429 and "Retry-After" not in limited.headers


def test_rate_limit_window_slides(start_server: Start, get: Get) -> None:
    srv = start_server(rate_limit=1, rate_window=0.2)
    assert get(srv).status_code == 200
    assert get(srv).status_code == 429
    deadline = time.monotonic() + 5
    while (status := get(srv).status_code) == 429 and time.monotonic() < deadline:
        pass
    assert status == 200


def test_error_rate_statuses_and_body(start_server: Start, get: Get) -> None:
    srv = start_server(error_rate=1.0, error_statuses=(502, 503))
    responses = [get(srv) for _ in range(20)]
    assert {r.status_code for r in responses} == {502, 503}
    assert all(r.json() == {"message": "Server Error"} for r in responses)


def test_error_rate_deterministic_with_fault_seed(start_server: Start, get: Get) -> None:
    runs = []
    for _ in range(2):
        srv = start_server(error_rate=0.5, fault_seed=7)
        runs.append([get(srv).status_code for _ in range(20)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500}


def test_fail_first_per_query(start_server: Start, get: Get) -> None:
    srv = start_server(fail_first=2)
    assert [get(srv, _seed=1).status_code for _ in range(3)] == [500, 500, 200]
    assert get(srv, _seed=2).status_code == 500  # a different query has its own counter
    assert srv.stats()["by_status"] == {"200": 1, "500": 3}


def test_truncate_json(start_server: Start, get: Get) -> None:
    srv = start_server(truncate_rate=1.0, truncate_mode="json")
    response = get(srv, _quantity=20, _seed=1)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)


def test_truncate_connection(start_server: Start, get: Get) -> None:
    srv = start_server(truncate_rate=1.0, truncate_mode="connection")
    with pytest.raises(httpx.RemoteProtocolError):
        get(srv, _quantity=20)


def test_reset(start_server: Start, get: Get) -> None:
    srv = start_server(reset_rate=1.0)
    with pytest.raises(httpx.TransportError):
        get(srv)
    assert srv.stats()["faults"] == {"reset": 1}


def test_hang_triggers_client_timeout(start_server: Start, get: Get) -> None:
    srv = start_server(hang_rate=1.0, hang_seconds=10)
    with pytest.raises(httpx.ReadTimeout):
        get(srv, timeout=0.2)
    assert srv.stats()["faults"] == {"hang": 1}


def test_latency(start_server: Start, get: Get) -> None:
    srv = start_server(latency_ms=150)
    # The handler's wait, recorded rather than timed: it sleeps on the server's stop event.
    stopping = srv._httpd.stopping
    waits: list[float | None] = []
    wait = stopping.wait

    def recorded(timeout: float | None = None) -> bool:
        waits.append(timeout)
        return wait(timeout)

    stopping.wait = recorded
    assert get(srv).status_code == 200
    assert waits == [pytest.approx(0.15)]


def test_short_pages(start_server: Start, get: Get) -> None:
    srv = start_server(short_rate=1.0)
    for seed in (1, 2, 3):
        body = get(srv, _quantity=100, _seed=seed).json()
        assert body["total"] == len(body["data"]) < 100


@pytest.mark.parametrize(
    ("drift", "check"),
    [
        (
            "county_code",
            lambda r: "county_code" in r["address"] and "country_code" not in r["address"],
        ),
        ("missing-email", lambda r: "email" not in r),
        (
            "wrong-type",
            lambda r: isinstance(r["birthday"], int) and isinstance(r["address"]["latitude"], str),
        ),
        ("extra-field", lambda r: len(r) == 11 and "email" in r),
    ],
)
def test_drift(start_server: Start, get: Get, drift: str, check: Callable[[dict], bool]) -> None:
    srv = start_server(drift=(drift,))
    data = get(srv, _quantity=10, _seed=1).json()["data"]
    assert all(check(r) for r in data)


def test_bad_values_keep_the_shape(start_server: Start, get: Get) -> None:
    srv = start_server(drift=("bad-values",))
    data = get(srv, _quantity=20, _seed=1).json()["data"]
    bad = [r for r in data if "@" not in r["email"]]
    assert len(bad) == 2
    assert all(r["birthday"] == FUTURE_BIRTHDAY for r in bad)
    assert all(len(r) == 10 for r in data)


def test_drifts_combine_and_accept_spellings(start_server: Start, get: Get) -> None:
    srv = start_server(drift=("county-code", "missing_email"))
    rec = get(srv, _quantity=1).json()["data"][0]
    assert "county_code" in rec["address"] and "email" not in rec
    assert list(rec["address"]).index("county_code") == 7  # same position as country_code


def test_down_spares_health_and_stats(start_server: Start, get: Get) -> None:
    srv = start_server(down=True, reset_rate=1.0)
    response = get(srv)
    assert response.status_code == 503
    assert response.json() == {"message": "Service Unavailable"}
    assert httpx.get(f"{srv.url}/health").status_code == 200
    assert httpx.get(f"{srv.url}/__stats").json()["by_status"] == {"503": 1}


def test_faults_combine(start_server: Start, get: Get) -> None:
    srv = start_server(fail_first=1, drift=("extra-field",), latency_ms=10)
    assert get(srv, _seed=5).status_code == 500
    assert "title" in get(srv, _seed=5).json()["data"][0]


def test_stop_is_prompt_with_hung_request(start_server: Start, get: Get) -> None:
    srv = start_server(hang_rate=1.0, hang_seconds=30)
    with pytest.raises(httpx.ReadTimeout):
        get(srv, timeout=0.1)
    srv.stop()
    with pytest.raises(httpx.TransportError):
        get(srv, timeout=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retry_after": "minutes"},
        {"truncate_mode": "gzip"},
        {"error_rate": 1.5},
        {"drift": ("x",)},
        {"redirect_status": 200},
        {"gzip_bomb_rate": -0.1},
        {"gzip_bomb_bytes": 1000},
        {"deep_json_levels": 0},
    ],
)
def test_fault_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FaultConfig(**kwargs)


# Hostile-source drifts: compared field by field with what a fault-free server serves for the same
# seeded query (same seed, same records), so any change beyond the stated one fails.
PAGE = {"_quantity": 100, "_seed": 31}
LEAKY_MESSAGE = "Contact jane.doe@example.com or +1 202 555 0143 (Zoë)"


def _data(srv: LocalApiServer, get: Get, **params: object) -> list[dict]:
    """Records of a 200 persons response."""
    response = get(srv, **params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_email_in_country(start_server: Start, server: LocalApiServer, get: Get) -> None:
    clean = _data(server, get, **PAGE)
    data = _data(start_server(drift=("email-in-country",)), get, **PAGE)
    expected = copy.deepcopy(clean)
    for rec in expected[::7]:
        rec["address"]["country"] = rec["email"]
    assert data == expected
    assert [list(r["address"]) for r in data] == [list(r["address"]) for r in clean]
    hit = [r for r in data if "@" in r["address"]["country"]]
    assert len(hit) == 15 and hit[0]["address"]["country"] == clean[0]["email"]
    codes = [r["address"]["country_code"] for r in hit]
    assert all(len(c) == 2 and c.isupper() for c in codes)


def test_name_in_gender(start_server: Start, server: LocalApiServer, get: Get) -> None:
    clean = _data(server, get, **PAGE)
    data = _data(start_server(drift=("name-in-gender",)), get, **PAGE)
    expected = copy.deepcopy(clean)
    for rec in expected[::10]:
        rec["gender"] = f"{rec['firstname']} {rec['lastname']}"
    assert data == expected
    assert sum(r["gender"] not in ("male", "female") for r in data) == 10


def test_int_coordinates(start_server: Start, server: LocalApiServer, get: Get) -> None:
    clean = _data(server, get, **PAGE)
    response = get(start_server(drift=("int-coordinates",)), **PAGE)
    data = response.json()["data"]
    expected = copy.deepcopy(clean)
    big = 0
    for rec in expected:
        for key in ("latitude", "longitude"):
            value = rec["address"][key]
            rec["address"][key] = round(value * 1e15)
            big += abs(value) > 9.1  # 2**53 / 1e15 is about 9.007
    assert data == expected
    coords = [r["address"][k] for r in data for k in ("latitude", "longitude")]
    assert all(type(v) is int for v in coords)
    assert sum(abs(v) > 2**53 for v in coords) == big > 150
    # On the wire as plain integer literals, not floats or exponents.
    assert f":{coords[0]}," in response.text


def test_email_keys(start_server: Start, server: LocalApiServer, get: Get) -> None:
    clean = _data(server, get, **PAGE)
    data = _data(start_server(drift=("email-keys",)), get, **PAGE)
    extra_keys = set()
    for rec, before in zip(data, clean, strict=True):
        assert "email" not in rec
        extra = set(rec) - set(before)
        assert extra == {before["email"]}
        assert rec[before["email"]] == "subscribed"
        assert {k: v for k, v in rec.items() if k not in extra} == {
            k: v for k, v in before.items() if k != "email"
        }
        extra_keys |= extra
    assert len(extra_keys) == 100


def test_hostile_drifts_survive_the_body_cache(start_server: Start, get: Get) -> None:
    srv = start_server(
        drift=("email-in-country", "name-in-gender", "int-coordinates", "email-keys")
    )
    first = get(srv, **PAGE).content
    assert get(srv, **PAGE).content == first  # served from the LRU
    srv.cache = BodyCache(0)  # rebuild the records and apply the drifts again
    assert get(srv, **PAGE).content == first
    rec = json.loads(first)["data"][0]
    assert "@" in rec["address"]["country"] and rec[rec["address"]["country"]] == "subscribed"
    assert isinstance(rec["address"]["latitude"], int) and " " in rec["gender"]


def test_hostile_drifts_plant_emails_despite_schema_drifts(
    start_server: Start, server: LocalApiServer, get: Get
) -> None:
    clean = _data(server, get, **PAGE)
    drift = ("missing-email", "wrong-type", "email-in-country", "int-coordinates", "email-keys")
    data = _data(start_server(drift=drift), get, **PAGE)
    assert data[7]["address"]["country"] == clean[7]["email"]
    assert all(
        r[c["email"]] == "subscribed" and "email" not in r for r, c in zip(data, clean, strict=True)
    )
    lat = clean[0]["address"]["latitude"]
    assert data[0]["address"]["latitude"] == round(lat * 1e15)


@pytest.mark.parametrize(
    ("spelling", "drift"),
    [
        ("email_in_country", "email-in-country"),
        ("NAME_IN_GENDER", "name-in-gender"),
        ("int_coordinates", "int-coordinates"),
        ("email_keys", "email-keys"),
    ],
)
def test_hostile_drift_spellings(spelling: str, drift: str) -> None:
    assert normalize_drift(spelling) == drift
    assert FaultConfig(drift=(spelling,)).drift == (drift,)


@pytest.mark.parametrize(
    ("faults", "statuses"),
    [
        ({"down": True}, {503}),
        ({"error_rate": 1.0, "error_statuses": (500, 502, 503)}, {500, 502, 503}),
        ({"fail_first": 20}, {500}),
    ],
)
def test_error_message_replaces_error_bodies(
    start_server: Start, get: Get, faults: dict, statuses: set[int]
) -> None:
    srv = start_server(error_message=LEAKY_MESSAGE, **faults)
    responses = [get(srv, _seed=1) for _ in range(20)]
    assert {r.status_code for r in responses} == statuses
    assert all(r.json() == {"message": LEAKY_MESSAGE} for r in responses)


def test_error_message_on_rate_limit_only_on_errors(start_server: Start, get: Get) -> None:
    srv = start_server(rate_limit=1, error_message=LEAKY_MESSAGE)
    ok = get(srv, _quantity=1)
    assert ok.status_code == 200 and LEAKY_MESSAGE not in ok.text
    limited = get(srv)
    assert limited.status_code == 429
    assert limited.json() == {"message": LEAKY_MESSAGE}
    assert "Retry-After" in limited.headers
    assert httpx.get(f"{srv.url}/nope").json()["status"] == "Not found"


# Hostile responses: each wraps the very page a fault-free server sends, so a client that reads
# without limits (or follows redirects) accepts it.


def test_redirect_points_at_the_same_query_elsewhere(
    start_server: Start, server: LocalApiServer, get: Get, http: httpx.Client
) -> None:
    srv = start_server(redirect_rate=1.0, redirect_status=307)
    response = get(srv, **PAGE)  # httpx does not follow redirects unless asked
    assert response.status_code == 307 and response.content == b""
    location = response.headers["Location"]
    assert location.startswith(f"{srv.url}/moved/api/v2/persons?")
    assert srv.served() == [] and srv.stats()["faults"] == {"redirect": 1}
    # A client that follows gets the page, and the server's log shows it went there.
    assert http.get(location).json()["data"] == _data(server, get, **PAGE)
    assert [q["path"] for q in srv.served()] == ["/moved/api/v2/persons"]


@pytest.mark.slow
def test_gzip_bomb_is_the_page_behind_a_gibibyte_of_whitespace(
    start_server: Start, server: LocalApiServer, get: Get, http: httpx.Client
) -> None:
    srv = start_server(gzip_bomb_rate=1.0)
    with http.stream("GET", f"{srv.base_url}/persons", params=PAGE) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.headers["Connection"] == "close"
        wire = b"".join(response.iter_raw())  # as sent: iter_raw does not inflate
    assert len(wire) < 2 << 20  # ~1 MB on the wire
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    expanded, rest = 0, wire
    while rest:  # in steps, to check the claim without holding a GiB
        expanded += len(inflater.decompress(rest, 1 << 24))
        rest = inflater.unconsumed_tail
    assert inflater.eof and expanded == (1 << 30) + len(get(server, **PAGE).content)
    assert srv.stats()["faults"] == {"gzip-bomb": 1}


def test_gzip_bomb_is_valid_gzip_of_valid_json(
    start_server: Start, server: LocalApiServer, get: Get
) -> None:
    srv = start_server(gzip_bomb_rate=1.0, gzip_bomb_bytes=1 << 20)
    response = get(srv, **PAGE)  # httpx inflates it, checking the CRC and length
    assert len(response.content) == (1 << 20) + len(get(server, **PAGE).content)
    assert response.json()["data"] == _data(server, get, **PAGE)


def test_deep_json_nests_900_levels_beside_the_page(
    start_server: Start, server: LocalApiServer, get: Get
) -> None:
    body = get(start_server(deep_json_rate=1.0), **PAGE).content
    payload = orjson.loads(body)  # within orjson's own limit (1024): it takes it
    assert payload["data"] == _data(server, get, **PAGE)
    meta, depth = payload["meta"], 1
    while meta:
        (meta,), depth = meta, depth + 1
    assert depth == 900


def _wait_idle(srv: LocalApiServer, within: float = 10.0) -> None:
    """Until no persons request is being handled (the server's own count)."""
    deadline = time.monotonic() + within
    while srv.stats()["in_flight"]:
        assert time.monotonic() < deadline, "the handler is still writing to a client that left"
        time.sleep(0.02)


def test_slow_body_trickles_after_prompt_headers_and_stops_when_the_client_leaves(
    start_server: Start, server: LocalApiServer, get: Get, http: httpx.Client
) -> None:
    whole = get(server, **PAGE).content
    srv = start_server(slow_body_rate=1.0, slow_body_seconds=0.05)
    with http.stream("GET", f"{srv.base_url}/persons", params=PAGE, timeout=5) as response:
        # Headers at once, promising the very page a fault-free server sends...
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == len(whole) > 40_000
        reads = response.iter_raw()
        got = b"".join(next(reads) for _ in range(5))
    # ...then a byte (two if the client fell behind) per pause, never more than that.
    assert 5 <= len(got) <= 10 and whole.startswith(got)
    _wait_idle(srv)  # the client hung up: the next write or the one after fails
    assert srv.stats()["faults"] == {"slow-body": 1}
    assert srv.stats()["by_status"] == {"200": 1}


def test_slow_body_first_slows_only_the_first_tries_of_each_query(
    start_server: Start, server: LocalApiServer, get: Get, http: httpx.Client
) -> None:
    srv = start_server(slow_body_first=1, slow_body_seconds=0.05)
    for seed in (31, 32):
        params = {**PAGE, "_seed": seed}
        with http.stream("GET", f"{srv.base_url}/persons", params=params, timeout=5) as response:
            assert len(next(response.iter_raw())) <= 2
        assert get(srv, **params).content == get(server, **params).content  # the retry: whole
    _wait_idle(srv)
    assert srv.stats()["faults"] == {"slow-body": 2}


@pytest.mark.parametrize(
    "kwargs", [{"slow_body_rate": 1.5}, {"slow_body_seconds": 0}, {"slow_body_first": -1}]
)
def test_slow_body_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FaultConfig(**kwargs)
