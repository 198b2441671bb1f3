"""The response limits on their own: the nesting scan, and the bounded read at its edge."""

from __future__ import annotations

import json

import httpx
import pytest

from local_api.pools import SUPPORTED_LOCALES
from local_api.server import REPLAY_HEADER
from tasks.ingest.limits import (
    MAX_JSON_DEPTH,
    EncodingError,
    LimitExceededError,
    nesting_depth,
    read_body,
)

DEEPER = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("", 0),
        ('"[[[["', 0),
        ('{"a":[1,{"b":[]}]}', 4),
        # Brackets in strings, also next to escaped quotes and backslashes, do not count.
        ('{"a":"[[[[","b":[1]}', 2),
        ('{"a":"\\"[[[","b":[1]}', 2),
        ('{"a":"\\\\","b":[[1]]}', 3),
        ('{"k\\\\\\"[":{}}', 2),
        ('["", "[", ""]', 1),
        ('["a\\n", "[", "\\u005c"]', 1),
        # Closing brackets in a string cannot hide depth that follows.
        ('["]]]]]]]]]]]]]]]]]]]]", ' + DEEPER + "]", MAX_JSON_DEPTH + 2),
        # A cut-off body is as deep as it got.
        ('{"data":[{"address":{"city":"x', 4),
    ],
)
def test_nesting_depth(text: str, depth: int) -> None:
    assert nesting_depth(text.encode()) == depth


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_a_page_nests_four_deep_however_escaped(api, locale: str) -> None:
    params = {"_quantity": 1000, "_seed": 3, "_locale": locale}
    # A locale's pools are built on its first request: allow for that.
    body = httpx.get(f"{api.base_url}/persons", params=params, timeout=60).content
    # As fakerapi.it's PHP sends it: non-ASCII as \\uXXXX, slashes as \\/.
    escaped = json.dumps(json.loads(body), separators=(",", ":")).replace("/", "\\/").encode()
    assert nesting_depth(body) == nesting_depth(escaped) == 4


@pytest.mark.parametrize("faults", [{}, {"gzip_bomb_rate": 1.0, "gzip_bomb_bytes": 1 << 20}])
def test_read_body_stops_one_byte_past_the_limit(start_api, faults: dict) -> None:
    server = start_api(**faults)
    url, params = f"{server.base_url}/persons", {"_quantity": 100, "_seed": 3}
    with httpx.Client() as client:
        with client.stream("GET", url, params=params) as response:
            body = read_body(response)
        # The page as served (a gzip bomb puts whitespace before it).
        page = client.get(url, params=params, headers={REPLAY_HEADER: "1"}).content
        assert body.lstrip() == page
        with client.stream("GET", url, params=params) as response:
            assert read_body(response, limit=len(body)) == body
        over = pytest.raises(LimitExceededError, match=f"the {len(body) - 1:,}-byte body limit")
        with client.stream("GET", url, params=params) as response, over:
            read_body(response, limit=len(body) - 1)


def test_read_body_refuses_an_encoding_not_asked_for() -> None:
    response = httpx.Response(200, headers={"Content-Encoding": "br"}, content=b"{}")
    with pytest.raises(EncodingError):
        read_body(response)
