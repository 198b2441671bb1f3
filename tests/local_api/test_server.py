"""Contract tests: the local server answers like fakerapi.it ``/persons``."""

from __future__ import annotations

import collections
import datetime as dt
import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from local_api import LocalApiServer
from local_api.countries import COUNTRIES
from local_api.records import parse_query

RECORD_KEYS = [
    "id", "firstname", "lastname", "email", "phone", "birthday", "gender", "address", "website",
    "image",
]  # fmt: skip
ADDRESS_KEYS = [
    "id", "street", "streetName", "buildingNumber", "city", "zipcode", "country", "country_code",
    "latitude", "longitude",
]  # fmt: skip


def persons(client: httpx.Client, **params: object) -> dict:
    """GET /persons and return the decoded 200 body."""
    response = client.get("/persons", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_envelope_and_record_shape(client: httpx.Client) -> None:
    response = client.get("/persons", params={"_quantity": 5, "_seed": 42})
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    assert list(body) == ["status", "code", "locale", "seed", "total", "data"]
    assert (body["status"], body["code"], body["locale"], body["seed"]) == (
        "OK",
        200,
        "en_US",
        "42",
    )
    assert body["total"] == len(body["data"]) == 5
    for rec in body["data"]:
        assert list(rec) == RECORD_KEYS
        assert list(rec["address"]) == ADDRESS_KEYS
        assert rec["gender"] in ("male", "female")
        assert rec["image"] == "http://placeimg.com/640/480/people"
        assert rec["website"].startswith("http://")
        assert re.fullmatch(r"\+1[2-9]\d{9}", rec["phone"])
        assert re.fullmatch(r"\d{5}(-\d{4})?", rec["address"]["zipcode"])
        assert re.fullmatch(r"[a-z0-9.]+@[a-z0-9.-]+\.[a-z.]+", rec["email"])


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("2000", 1000), ("1000", 1000), ("7", 7), ("0", 10), ("-3", 10), ("abc", 10), ("", 10)],
)
def test_quantity_clamping(client: httpx.Client, quantity: str, expected: int) -> None:
    body = persons(client, _quantity=quantity, _seed=1)
    assert body["total"] == len(body["data"]) == expected


def test_quantity_missing_defaults_to_ten(client: httpx.Client) -> None:
    assert persons(client)["total"] == 10


def test_same_seed_is_byte_identical_and_different_seeds_differ(
    client: httpx.Client, server: LocalApiServer
) -> None:
    params = {"_quantity": 50, "_seed": 12345}
    first = client.get("/persons", params=params).content
    cache, server.cache = server.cache, type(server.cache)(0)  # bypass the LRU: rebuild records
    try:
        second = client.get("/persons", params=params).content
    finally:
        server.cache = cache
    assert first == second
    other = persons(client, _quantity=50, _seed=12346)
    assert other["data"] != json.loads(first)["data"]


def test_seed_is_stable_across_restarts() -> None:
    with LocalApiServer(port=0) as a:
        one = httpx.get(f"{a.base_url}/persons", params={"_seed": 99, "_quantity": 20}).content
    with LocalApiServer(port=0) as b:
        two = httpx.get(f"{b.base_url}/persons", params={"_seed": 99, "_quantity": 20}).content
    assert one == two


@pytest.mark.parametrize("seed", [None, "0", "junk"])
def test_unseeded_requests_are_random(client: httpx.Client, seed: str | None) -> None:
    params = {"_quantity": 20} | ({"_seed": seed} if seed is not None else {})
    a, b = persons(client, **params), persons(client, **params)
    assert a["seed"] is None and b["seed"] is None
    assert a["data"] != b["data"]


@pytest.mark.parametrize("gender", ["male", "female"])
def test_gender_filter(client: httpx.Client, gender: str) -> None:
    body = persons(client, _quantity=200, _gender=gender, _seed=3)
    assert {r["gender"] for r in body["data"]} == {gender}


def test_gender_mixed_by_default(client: httpx.Client) -> None:
    counts = collections.Counter(r["gender"] for r in persons(client, _quantity=1000)["data"])
    assert set(counts) == {"male", "female"}
    assert 400 < counts["male"] < 600


def test_birthday_range(client: httpx.Client) -> None:
    body = persons(
        client, _quantity=500, _birthday_start="1980-01-01", _birthday_end="1980-12-31", _seed=5
    )
    days = sorted(r["birthday"] for r in body["data"])
    assert days[0] >= "1980-01-01" and days[-1] <= "1980-12-31"
    assert len({d[:7] for d in days}) == 12  # spread over every month


def test_default_birthdays_uniform_since_1900(client: httpx.Client) -> None:
    today = dt.date.today()
    days = [
        r["birthday"]
        for s in (11, 12, 13)
        for r in persons(client, _quantity=1000, _seed=s)["data"]
    ]
    assert min(days) >= "1900-01-01" and max(days) <= today.isoformat()
    # Feb 29 has no counterpart 90 years back; the day before is close enough here.
    anchor = today if (today.month, today.day) != (2, 29) else today - dt.timedelta(days=1)
    cutoff = anchor.replace(year=anchor.year - 90).isoformat()
    share_90_plus = sum(d <= cutoff for d in days) / len(days)
    assert 0.24 < share_90_plus < 0.34


def test_ids_restart_and_address_id_constant(client: httpx.Client) -> None:
    for seed in (1, 2):
        data = persons(client, _quantity=30, _seed=seed)["data"]
        assert [r["id"] for r in data] == list(range(1, 31))
        assert {r["address"]["id"] for r in data} == {1}


@pytest.mark.parametrize("path", ["/", "/api/v2/companies", "/api/v3/persons", "/api/v2/persons/1"])
def test_not_found(server: LocalApiServer, path: str) -> None:
    response = httpx.get(server.url + path)
    assert response.status_code == 404
    assert response.content == b'{"status":"Not found","code":404,"total":0}'


def test_v1_and_v2_same_shape(server: LocalApiServer) -> None:
    params = {"_quantity": 5, "_seed": 8}
    v1 = httpx.get(f"{server.url}/api/v1/persons", params=params).json()
    v2 = httpx.get(f"{server.url}/api/v2/persons", params=params).json()
    assert v1 == v2


def test_health_and_stats(server: LocalApiServer) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "OK"}
    server.reset_stats()
    httpx.get(f"{server.base_url}/persons", params={"_quantity": 1})
    httpx.get(f"{server.url}/nope")
    stats = httpx.get(f"{server.url}/__stats").json()
    assert stats["total"] == 2
    assert stats["by_status"] == {"200": 1, "404": 1}
    assert server.stats() == stats


def test_countries_one_code_each_and_non_ascii(client: httpx.Client) -> None:
    pairs = collections.defaultdict(set)
    raw = b""
    for seed in range(1, 11):
        response = client.get("/persons", params={"_quantity": 1000, "_seed": seed})
        raw += response.content
        for rec in response.json()["data"]:
            pairs[rec["address"]["country"]].add(rec["address"]["country_code"])
    assert len(pairs) >= 240
    assert all(len(codes) == 1 for codes in pairs.values())
    codes = [next(iter(c)) for c in pairs.values()]
    assert len(codes) == len(set(codes))
    assert pairs["Germany"] == {"DE"}
    for name in ("Côte d\u2019Ivoire", "Türkiye", "Bosnia & Herzegovina", "Curaçao", "Réunion"):
        assert name in pairs
        assert name.encode() in raw  # UTF-8 on the wire, not \u escapes
    assert len(COUNTRIES) == 247


def test_email_domain_shares(client: httpx.Client) -> None:
    emails = [
        r["email"] for s in range(21, 26) for r in persons(client, _quantity=1000, _seed=s)["data"]
    ]
    domains = collections.Counter(e.split("@")[1] for e in emails)
    n = len(emails)
    for free in ("gmail.com", "hotmail.com", "yahoo.com"):
        assert 0.13 < domains[free] / n < 0.21
    company = {d for d in domains if d not in ("gmail.com", "hotmail.com", "yahoo.com")}
    assert len(company) > 1000


def test_locales(client: httpx.Client) -> None:
    de = persons(client, _quantity=5, _locale="de_DE", _seed=1)
    assert de["locale"] == "de_DE"
    assert all(r["phone"].startswith("+49") for r in de["data"])
    assert persons(client, _locale="xx_XX")["locale"] == "en_US"


def test_coordinates(client: httpx.Client) -> None:
    for rec in persons(client, _quantity=500, _seed=4)["data"]:
        lat, lon = rec["address"]["latitude"], rec["address"]["longitude"]
        assert isinstance(lat, float) and -90 <= lat <= 90
        assert isinstance(lon, float) and -180 <= lon <= 180
        assert round(lat, 6) == lat and round(lon, 6) == lon


def test_records_effectively_unique_across_pages(client: httpx.Client) -> None:
    seen: set[tuple] = set()
    total = 0
    for page in range(30):
        for r in persons(client, _quantity=1000, _seed=1000 + page)["data"]:
            seen.add((r["firstname"], r["lastname"], r["email"], r["birthday"]))
            total += 1
    assert total == 30_000
    assert total - len(seen) <= 1


def test_warm_page_comes_from_the_cache(client: httpx.Client, server: LocalApiServer) -> None:
    # How fast: `make bench`. Here: a repeated seeded page is the cached body, byte for byte.
    persons(client, _quantity=1000, _seed=777)  # warm-up
    fresh = client.get("/persons", params={"_quantity": 1000, "_seed": 778}).content
    key = parse_query({"_quantity": ["1000"], "_seed": ["778"]}).cache_key()
    assert server.cache.get(key) == fresh
    assert client.get("/persons", params={"_quantity": 1000, "_seed": 778}).content == fresh


def test_concurrent_clients(server: LocalApiServer) -> None:
    def fetch(i: int) -> list[int]:
        with httpx.Client(base_url=server.base_url, timeout=10) as c:
            return [
                c.get("/persons", params={"_quantity": 200, "_seed": i * 10 + j}).status_code
                for j in range(5)
            ]

    with ThreadPoolExecutor(8) as pool:
        statuses = [s for result in pool.map(fetch, range(8)) for s in result]
    assert statuses == [200] * 40


def test_parse_query_normalizes() -> None:
    q = parse_query(
        {"_birthday_start": ["2000-01-01"], "_birthday_end": ["1990-01-01"], "_gender": ["FEMALE"]}
    )
    assert (q.birthday_start, q.birthday_end) == (dt.date(1990, 1, 1), dt.date(2000, 1, 1))
    assert q.gender == "female"
    q = parse_query({"_birthday_start": ["1990-1-1"], "_gender": ["other"], "_locale": ["de-de"]})
    assert q.birthday_start == dt.date(1900, 1, 1) and q.gender is None and q.locale == "de_DE"
