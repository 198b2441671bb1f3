"""A page range's journey from the API to masked rows: fetch it, then mask it in a task of its
own, so the raw rows end in the mask task and only hashes of their values go on."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import pyarrow as pa

from tasks.common.handoff import HandsOverTable
from tasks.common.run_config import FetchConfig
from tasks.common.secrets import hash_key
from tasks.common.stage import stage_task
from tasks.ingest.fetch import FetchedRange, fetch_range
from tasks.ingest.mask import mask_pii
from tasks.ingest.plan import PageRange
from tasks.privacy.leak_scan import SecretHashes, secret_hashes


@dataclass
class MaskedRange(HandsOverTable):
    """A masked range with what it cost, handed from the mask task to the lake writer."""

    table: pa.Table | None
    # Hashes of the range's raw values for the run's leak scan; the raw rows are gone.
    secrets: SecretHashes
    pages: int
    attempts: int
    retries: int
    signatures: set[str]
    seconds_fetch: float
    seconds_mask: float
    seconds_hash: float


def fetch_page_range(config: FetchConfig, page_range: PageRange) -> tuple[FetchedRange, float]:
    """Fetch a range of pages (raw records stay in memory only); returns them and the seconds."""
    started = time.perf_counter()
    fetched = fetch_range(config, page_range)
    return fetched, time.perf_counter() - started


fetch_page_range_task = stage_task(fetch_page_range, task_run_name="fetch {page_range.label}")


def mask_page_range(fetched: tuple[FetchedRange, float], run_date: dt.date) -> MaskedRange:
    """Mask a fetched range and hash its raw values for the leak scan; the raw rows end here."""
    raw, seconds_fetch = fetched
    source = raw.take_table()
    started = time.perf_counter()
    table = mask_pii(source, run_date, hash_key())
    masked = time.perf_counter()
    secrets = secret_hashes(source)
    return MaskedRange(
        table=table,
        secrets=secrets,
        pages=raw.pages,
        attempts=raw.attempts,
        retries=raw.retries,
        signatures=raw.signatures,
        seconds_fetch=seconds_fetch,
        seconds_mask=masked - started,
        seconds_hash=time.perf_counter() - masked,
    )


mask_page_range_task = stage_task(mask_page_range)
