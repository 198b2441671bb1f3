"""The columnar fast path accepts exactly the pages the general path accepts, with the same
columns and signature, and leaves every other page to it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pytest

from local_api.pools import SUPPORTED_LOCALES
from local_api.server import LocalApiServer
from tasks.ingest.columnar import typed_page
from tasks.ingest.source_schema import SchemaDriftError, to_source_table

QUANTITY = 200


def general(body: bytes, quantity: int) -> tuple[pa.Table, str] | str:
    """What the general path (fetch._attempt after the fast path) makes of a body: its columns
    and signature, or the kind of refusal."""
    try:
        payload = orjson.loads(body)
    except ValueError:
        return "not JSON"
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return "no data list"
    if len(data) != quantity:
        return "short page"
    try:
        return to_source_table(data, 0)
    except SchemaDriftError:
        return "schema drift"


def assert_same(body: bytes, quantity: int = QUANTITY) -> None:
    """The fast path gives what the general path gives; the body must be one it accepts."""
    expected = general(body, quantity)
    assert not isinstance(expected, str), f"the general path refused the page: {expected}"
    fast = typed_page(body, quantity)
    assert fast is not None, "a page that keeps the contract took the general path"
    assert fast[1] == expected[1]
    assert fast[0].schema == expected[0].schema
    assert fast[0].equals(expected[0])


def served_body(api: LocalApiServer, locale: str, seed: int) -> bytes:
    params = {"_quantity": QUANTITY, "_seed": seed, "_locale": locale}
    response = httpx.get(f"{api.base_url}/persons", params=params, timeout=60)
    response.raise_for_status()
    return response.content


def php_style(body: bytes) -> bytes:
    """The public API's PHP json_encode: \\uXXXX for non-ASCII and \\/ for every slash."""
    return json.dumps(orjson.loads(body), ensure_ascii=True).replace("/", "\\/").encode()


def pretty(body: bytes) -> bytes:
    return json.dumps(orjson.loads(body), indent=4, ensure_ascii=False).encode()


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_served_pages_give_the_general_paths_columns(api: LocalApiServer, locale: str) -> None:
    for seed in (1, 2, 3):
        body = served_body(api, locale, seed)
        for form in (body, php_style(body), pretty(body)):
            assert_same(form)


def _edit(body: bytes, edit: Any) -> bytes:
    payload = orjson.loads(body)
    edit(payload["data"][7])
    return orjson.dumps(payload)


def _set(path: str, value: object) -> Any:
    def edit(record: dict[str, Any]) -> None:
        *parents, leaf = path.split(".") if "@" not in path else [path]
        for parent in parents:
            record = record[parent]
        record[leaf] = value

    return edit


def _drop(path: str) -> Any:
    def edit(record: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for parent in parents:
            record = record[parent]
        del record[leaf]

    return edit


EDITS = {
    "an unexpected field": _set("nickname", "Zed"),
    "an e-mail address as a key": _set("zelda@example.org", "x"),
    "an unexpected address field": _set("address.county_code", "DE"),
    "an object nested in address": _set("address.extra", {"deep": 1}),
    "a required field missing": _drop("email"),
    "an optional field missing": _drop("phone"),
    "a null": _set("firstname", None),
    "a number for a string": _set("phone", 18725574706),
    "a string for a number": _set("address.latitude", "52.5"),
    "an integer a double cannot hold": _set("address.longitude", 2**53 + 1),
    "a list for a string": _set("lastname", ["a", "b"]),
    "address not an object": _set("address", "Main Street 1"),
}


@pytest.fixture(scope="module")
def body() -> bytes:
    with LocalApiServer(port=0) as server:
        return served_body(server, "en_US", 5)


@pytest.mark.parametrize("name", EDITS)
def test_a_record_off_the_contract_takes_the_general_path(body: bytes, name: str) -> None:
    edited = _edit(body, EDITS[name])
    assert typed_page(edited, QUANTITY) is None


def test_integer_coordinates_a_double_holds_stay_on_the_fast_path(body: bytes) -> None:
    assert_same(_edit(body, _set("address.latitude", 52)))


RAW_EDITS = {
    "a byte-order mark": lambda b: b"\xef\xbb\xbf" + b,
    "invalid UTF-8": lambda b: b.replace(b'"firstname":"', b'"firstname":"\xff', 1),
    "NaN": lambda b: b.replace(b'"latitude":', b'"latitude":NaN,"x":', 1),
    "trailing data": lambda b: b + b" x",
    "two objects": lambda b: b + b"\n" + b,
    "truncated": lambda b: b[: len(b) // 2],
    "a duplicate key": lambda b: b.replace(b'"email":', b'"email":"a","email":', 1),
    "a lone surrogate": lambda b: b.replace(b'"firstname":"', b'"firstname":"\\ud800', 1),
    "an array at the top": lambda b: b"[" + b + b"]",
    "data null": lambda b: b'{"status":"OK","data":null}',
    "no data": lambda b: b'{"status":"OK","code":200}',
    "empty body": lambda b: b"",
}


@pytest.mark.parametrize("name", RAW_EDITS)
def test_a_body_off_the_contract_takes_the_general_path(body: bytes, name: str) -> None:
    edited = RAW_EDITS[name](body)
    assert typed_page(edited, QUANTITY) is None


def test_a_short_page_takes_the_general_path(body: bytes) -> None:
    assert typed_page(body, QUANTITY + 1) is None
    assert general(body, QUANTITY + 1) == "short page"


@pytest.mark.parametrize("name", [*EDITS, *RAW_EDITS])
def test_whatever_the_fast_path_leaves_the_general_path_decides_as_before(
    body: bytes, name: str
) -> None:
    # Not a property of the fast path but of the pair: each off-contract body is refused or
    # accepted by the general path exactly as it was before the fast path existed (a field
    # missing from one record is a null there, which the GX suite then judges).
    edited = _edit(body, EDITS[name]) if name in EDITS else RAW_EDITS[name](body)
    outcome = general(edited, QUANTITY)
    refused = {
        "a number for a string": "schema drift",
        "a string for a number": "schema drift",
        "an integer a double cannot hold": "schema drift",
        "a list for a string": "schema drift",
        "address not an object": "schema drift",
        "a byte-order mark": "not JSON",
        "invalid UTF-8": "not JSON",
        "NaN": "not JSON",
        "trailing data": "not JSON",
        "two objects": "not JSON",
        "truncated": "not JSON",
        "a lone surrogate": "not JSON",
        "an array at the top": "no data list",
        "data null": "no data list",
        "no data": "no data list",
        "empty body": "not JSON",
    }
    if name in refused:
        assert outcome == refused[name]
    else:
        assert not isinstance(outcome, str)
