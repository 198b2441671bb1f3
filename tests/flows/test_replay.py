"""Unlinkable lake rows (issue 14, item 2): replaying a date's requests without the key links no
lake row to a person, by seed or by position.

The attack the issue measured: page seeds came from the run date by a public formula, so anyone
could ask the API for the same pages again, and the raw lake kept the source's order (and a
`page` column), so row i of the lake was record i of the replay: 2,000 of 2,000 rows matched,
person_key included. Here the run's pages are replayed the way an attacker without the key
would (the formula from the date alone, as the code used to do), and the way the key holder
can (the queries the server logged), and the lake is checked against both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import httpx
import pyarrow.parquet as pq
import pytest

from flows.user_metrics import user_metrics_pipeline
from tasks.ingest.fetch import close_clients
from tasks.storage.lake import raw_path
from tests.conftest import TEST_KEY
from tests.helpers import served_records

RUN_DATE = dt.date(2026, 10, 5)
RECORDS, PAGE_SIZE = 2000, 500
pytestmark = pytest.mark.timeout(300)


def public_seed(text: str) -> int:
    """The seed formula anyone could compute: SHA-256 of public text, as the planner once did."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % (2**31 - 1) + 1


def person_key(record: dict) -> str:
    """The pseudonym as Python's hmac makes it (what the key holder, and only they, can do)."""
    parts = [record["email"].strip(" ").lower(), record["firstname"], record["lastname"]]
    message = "\x1f".join([*parts, record["birthday"]]).encode()
    return hmac.new(TEST_KEY.encode(), message, hashlib.sha256).hexdigest()


def replay(api, seeds: list[int]) -> list[dict]:
    """Ask the API for the run's pages again, with the given seeds and the run's own query."""
    query = httpx.get(f"{api.url}/__served", timeout=30).json()["queries"][0]
    out = []
    with httpx.Client(base_url=api.url, timeout=60) as client:
        for seed in seeds:
            params = {**query["params"], "_seed": str(seed)}
            out += client.get(query["path"], params=params).raise_for_status().json()["data"]
    return out


def quasi_identifiers(row: dict) -> tuple:
    """Gender, country code and e-mail domain of a served record or a lake row."""
    code = row["address"]["country_code"] if "address" in row else row["country_code"]
    return (row["gender"], code, row["email"].rsplit("@", 1)[-1].lower())


@pytest.fixture
def lake_rows(api, pipeline_env, prefect_storage) -> list[dict]:
    try:
        user_metrics_pipeline(
            api_url=api.base_url, records=RECORDS, page_size=PAGE_SIZE, run_date=RUN_DATE
        )
    finally:
        close_clients()
    table = pq.read_table(raw_path(pipeline_env / "lake", RUN_DATE))
    assert table.num_rows == RECORDS
    return table.to_pylist()


def test_a_replay_without_the_key_matches_no_lake_row(api, lake_rows: list[dict]) -> None:
    stored = {row["person_key"] for row in lake_rows}
    # The key holder's replay (the server's own log of the run's queries) finds every row: the
    # matching below is able to link, so an empty result means something.
    served = served_records(api)
    assert {person_key(r) for r in served} == stored

    # Without the key: the date's public seed, and page seeds derived from it the public way.
    run_seed = public_seed(f"run-date:{RUN_DATE.isoformat()}")
    pages = range(RECORDS // PAGE_SIZE)
    guesses = [public_seed(f"{run_seed}:{i}") for i in pages] + [run_seed, *pages]
    replayed = replay(api, guesses)
    assert len(replayed) == len(guesses) * PAGE_SIZE
    assert not {person_key(r) for r in replayed} & stored, "a replay found a stored person"

    # Nor does position help: no `page` column, rows in person_key order, and even the exact
    # records, in the order served, line up with the lake rows only by chance (the share of
    # positions whose gender, country and e-mail domain agree stays near random).
    assert "page" not in lake_rows[0]
    keys = [row["person_key"] for row in lake_rows]
    assert keys == sorted(keys)
    pairs = zip(served, lake_rows, strict=True)
    same = sum(quasi_identifiers(a) == quasi_identifiers(b) for a, b in pairs)
    assert same / RECORDS < 0.05, f"{same} of {RECORDS} positions agree"
