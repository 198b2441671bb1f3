"""Thin Prefect task wrappers over the plain stage functions (which tests call directly).

Tasks that touch raw records never persist results or cache entries: raw PII must not reach the
Prefect results folder, so `persist_result=False` and `NO_CACHE` are set explicitly here.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from functools import cache

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.fetch import FetchConfig, FetchedRange, fetch_range
from tasks.mask import mask_pii
from tasks.plan import PageRange
from tasks.secrets import resolve_hash_key
from tasks.settings import get_settings

_RAW = {"persist_result": False, "cache_policy": NO_CACHE}


@dataclass
class MaskedRange:
    """A masked range with what it cost, handed from the mask task to the lake writer."""

    table: pa.Table
    pages: int
    attempts: int
    retries: int
    signatures: set[str]
    seconds_fetch: float
    seconds_mask: float


@cache
def hash_key() -> bytes:
    """The HMAC key, resolved once per process (so it is never a task parameter)."""
    return resolve_hash_key(get_settings())


@task(name="fetch_page_range", task_run_name="fetch {page_range.label}", **_RAW)
def fetch_page_range(config: FetchConfig, page_range: PageRange) -> tuple[FetchedRange, float]:
    """Fetch a range of pages (raw records stay in memory only)."""
    started = time.perf_counter()
    fetched = fetch_range(config, page_range)
    return fetched, time.perf_counter() - started


@task(name="mask_pii", **_RAW)
def mask_page_range(fetched: tuple[FetchedRange, float], run_date: dt.date) -> MaskedRange:
    """Mask a fetched range; the raw table is dropped as soon as this returns."""
    raw, seconds_fetch = fetched
    started = time.perf_counter()
    table = mask_pii(raw.table, run_date, hash_key())
    return MaskedRange(
        table=table,
        pages=raw.pages,
        attempts=raw.attempts,
        retries=raw.retries,
        signatures=raw.signatures,
        seconds_fetch=seconds_fetch,
        seconds_mask=time.perf_counter() - started,
    )
