"""What the server says it served: the persons queries it answered with 200, asked for again."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from local_api import LocalApiServer
from local_api.server import REPLAY_HEADER
from tests.helpers import served_records

Start = Callable[..., LocalApiServer]
FIRST = {
    "_quantity": 30,
    "_seed": 11,
    "_locale": "en_US",
    "_birthday_start": "1950-01-01",
    "_birthday_end": "2000-12-31",
}
SECOND = {**FIRST, "_quantity": 20, "_seed": 12, "_gender": "female"}


def test_each_query_answered_with_200_is_listed_once_in_order(
    start_server: Start, http: httpx.Client
) -> None:
    srv = start_server()
    url = f"{srv.base_url}/persons"
    bodies = [http.get(url, params=p).json()["data"] for p in (FIRST, SECOND, FIRST)]
    assert http.get(f"{srv.url}/api/v2/nothing-here").status_code == 404
    assert srv.served() == [
        {"path": "/api/v2/persons", "params": FIRST, "times": 2},
        {"path": "/api/v2/persons", "params": SECOND, "times": 1},
    ]
    assert http.get(f"{srv.url}/__served").json() == {"queries": srv.served()}
    # A query served twice (a retried page) counts once.
    assert served_records(srv) == bodies[0] + bodies[1]
    assert served_records(srv.url) == bodies[0] + bodies[1]


def _settled_stats(srv: LocalApiServer) -> dict:
    """The server's counters once no request is in flight: it counts a response out only after
    sending it, so a client can read the stats a moment before that."""
    deadline = time.monotonic() + 10
    while (stats := srv.stats())["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the counter the server lowers on its own thread
    return stats


def test_errors_are_not_listed_and_asking_again_is_neither_faulted_nor_counted(
    start_server: Start, http: httpx.Client
) -> None:
    srv = start_server(fail_first=1, drift=("extra-field",))
    url = f"{srv.base_url}/persons"
    assert http.get(url, params=FIRST).status_code == 500
    assert srv.served() == []
    served = http.get(url, params=FIRST)
    assert served.status_code == 200
    assert [q["params"] for q in srv.served()] == [FIRST]
    stats = _settled_stats(srv)

    # SECOND was never served, so fail_first would answer 500: a replay gets the plain 200,
    # with the drift every 200 of this server carries.
    again = http.get(url, params=SECOND, headers={REPLAY_HEADER: "1"})
    assert again.status_code == 200 and "title" in again.json()["data"][0]
    assert served_records(srv) == served.json()["data"]
    assert _settled_stats(srv) == stats and [q["params"] for q in srv.served()] == [FIRST]

    srv.reset_stats()
    assert srv.served() == [] and served_records(srv) == []


def test_a_short_answer_is_listed_as_its_query(start_server: Start, http: httpx.Client) -> None:
    # The client retries such a page; asking again gives the whole page it finally got.
    srv = start_server(short_rate=1.0)
    short = http.get(f"{srv.base_url}/persons", params=FIRST).json()
    assert short["total"] < FIRST["_quantity"]
    (record,) = srv.served()
    assert record["params"] == FIRST
    assert len(served_records(srv)) == FIRST["_quantity"]
