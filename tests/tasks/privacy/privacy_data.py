"""Realistic synthetic batches for the privacy tests: records as the local API serves them."""

from __future__ import annotations

import datetime as dt
from functools import cache

import pyarrow as pa

from local_api.pools import get_pools
from local_api.records import build_records, parse_query
from tasks.ingest.mask import mask_pii
from tasks.ingest.source_schema import to_source_table
from tasks.privacy.generalize import generalize

RUN_DATE = dt.date(2026, 3, 1)
KEY = b"privacy-test-key-0123456789"


@cache
def _records(records: int, seed: int) -> tuple[dict, ...]:
    out: list[dict] = []
    for page in range(-(-records // 1000)):
        quantity = min(1000, records - 1000 * page)
        query = parse_query(
            {
                "_quantity": [str(quantity)],
                "_seed": [str(seed * 1000 + page + 1)],
                "_birthday_start": ["1900-01-01"],
                "_birthday_end": [RUN_DATE.isoformat()],
            }
        )
        out += build_records(query, get_pools("en_US"))
    return tuple(out)


def served(records: int, seed: int = 7) -> list[dict]:
    """Records shaped like the public API's (the same generator as the local server)."""
    return [dict(r) for r in _records(records, seed)]


def source_table(records: list[dict]) -> pa.Table:
    """The typed raw page the fetch step holds in memory (SOURCE_SCHEMA)."""
    pages = [records[i : i + 1000] for i in range(0, len(records), 1000)]
    return pa.concat_tables([to_source_table(p, i)[0] for i, p in enumerate(pages)])


def masked_and_analytical(source: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The masked raw batch and the analytical batch, built by the pipeline's own functions."""
    masked = mask_pii(source, RUN_DATE, KEY)
    return masked, generalize(masked, RUN_DATE)
