"""Throughput of mask_pii + generalize on an in-memory batch (no server, no Prefect, no disk)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import orjson
import pyarrow as pa

from local_api.pools import get_pools
from local_api.records import DEFAULT_BIRTHDAY_START, build_records, parse_query
from tasks.ingest.columnar import typed_page
from tasks.ingest.mask import mask_pii
from tasks.ingest.source_schema import to_source_table
from tasks.privacy.generalize import generalize

RUN_DATE = dt.date(2026, 3, 1)
KEY = b"bench-key-0123456789abcdef"
PAGE_SIZE = 1000
DISTINCT_PAGES = 8
# The flow masks up to 32 page ranges per run: ~31k rows per mask_pii call at 1M records.
CHUNK_ROWS = 31_250


def source_table(records: int) -> pa.Table:
    """`records` rows of local_api persons in 1,000-row chunks, as the fetch step builds them."""
    pools = get_pools("en_US")
    pages = []
    for index in range(DISTINCT_PAGES):
        query = parse_query(
            {
                "_quantity": [str(PAGE_SIZE)],
                "_seed": [str(index + 1)],
                "_birthday_start": [DEFAULT_BIRTHDAY_START.isoformat()],
                "_birthday_end": [RUN_DATE.isoformat()],
            }
        )
        pages.append(to_source_table(build_records(query, pools), index)[0])
    # Tiling a few thousand realistic rows keeps the set-up cheap; the transform never dedups,
    # so repeated identities cost as much as fresh ones.
    full, rest = divmod(records, PAGE_SIZE)
    tables = [pages[i % DISTINCT_PAGES] for i in range(full)]
    if rest:
        tables.append(pages[full % DISTINCT_PAGES].slice(0, rest))
    return pa.concat_tables(tables)


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` runs after one warm-up run."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def mask_in_chunks(source: pa.Table) -> pa.Table:
    """Mask the batch one page range at a time, sequentially, as the flow's mask tasks do."""
    parts = [
        mask_pii(source.slice(start, CHUNK_ROWS), RUN_DATE, KEY)
        for start in range(0, source.num_rows, CHUNK_ROWS)
    ]
    return pa.concat_tables(parts)


def measure(records: int = 1_000_000, repeats: int = 3) -> dict:
    """Records/s of mask, generalize and both, in bulk and with the flow's chunked masking."""
    source = source_table(records)
    masked = mask_pii(source, RUN_DATE, KEY)
    seconds = {
        "mask": best_seconds(lambda: mask_pii(source, RUN_DATE, KEY), repeats),
        "generalize": best_seconds(lambda: generalize(masked, RUN_DATE), repeats),
        "mask_generalize": best_seconds(
            lambda: generalize(mask_pii(source, RUN_DATE, KEY), RUN_DATE), repeats
        ),
        "mask_chunked": best_seconds(lambda: mask_in_chunks(source), repeats),
        "mask_chunked_generalize": best_seconds(
            lambda: generalize(mask_in_chunks(source), RUN_DATE), repeats
        ),
    }
    rates = {f"{name}_records_per_s": round(records / s) for name, s in seconds.items()}
    return {"records": records, "chunk_rows": CHUNK_ROWS, **rates}


def page_bodies(pages: int = 30, size: int = PAGE_SIZE) -> list[bytes]:
    """Response bodies as the API sends them (the contract's envelope), for `pages` seeds."""
    pools = get_pools("en_US")
    bodies = []
    for index in range(pages):
        params = {"_quantity": [str(size)], "_seed": [str(index + 1)]}
        params |= {"_birthday_end": [RUN_DATE.isoformat()]}
        records = build_records(parse_query(params), pools)
        envelope = {"status": "OK", "code": 200, "locale": "en_US", "seed": str(index + 1)}
        bodies.append(orjson.dumps({**envelope, "total": size, "data": records}))
    return bodies


def bytes_to_rows(pages: int = 30, repeats: int = 5) -> dict:
    """Response bytes -> masked and generalized Arrow, the fetch task's CPU path, per step:
    columns (`typed_page`, pyarrow's JSON reader), mask, generalize; best of `repeats`. The
    general path a page takes when it does not keep the contract (orjson, then
    `to_source_table`) is timed beside it, for comparison."""
    bodies = page_bodies(pages)
    records = pages * PAGE_SIZE

    def columns() -> pa.Table:
        typed = [typed_page(body, PAGE_SIZE) for body in bodies]
        if any(page is None for page in typed):
            raise RuntimeError("a bench page took the general path")
        return pa.concat_tables([page[0] for page in typed if page is not None])

    def general() -> pa.Table:
        parsed = [orjson.loads(body)["data"] for body in bodies]
        return pa.concat_tables([to_source_table(data, i)[0] for i, data in enumerate(parsed)])

    source = columns()
    masked = mask_pii(source, RUN_DATE, KEY)
    seconds = {
        "columns": best_seconds(columns, repeats),
        "mask": best_seconds(lambda: mask_pii(source, RUN_DATE, KEY), repeats),
        "generalize": best_seconds(lambda: generalize(masked, RUN_DATE), repeats),
    }
    total = sum(seconds.values())
    split = {f"ms_{name}": round(1000 * s, 1) for name, s in seconds.items()}
    return {
        "records": records,
        "records_per_s": round(records / total),
        **split,
        "ms_general_path_columns": round(1000 * best_seconds(general, repeats), 1),
    }


if __name__ == "__main__":
    for name, value in measure().items():
        print(f"{name:>40}: {value:>12,}")
