"""A page range from the API to masked rows in one task: the fetch is a plain function called
inside it, so raw rows exist only in the process and task that fetched them (under any task
runner, Dask included) and a task result never holds them: only masked rows and hashes of the
raw values (for the leak scan) leave the task."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from prefect.client.schemas.objects import State

from tasks.common.handoff import HandsOverTable
from tasks.common.run_config import FetchConfig
from tasks.common.secrets import hash_key
from tasks.common.tasks import as_task
from tasks.common.vocabulary import check_vocabulary
from tasks.ingest.fetch import fetch_range, run_time_left
from tasks.ingest.mask import mask_pii
from tasks.ingest.plan import PageRange
from tasks.privacy.leak_scan import SecretHashes, secret_hashes


@dataclass
class MaskedRange(HandsOverTable):
    """A masked range with what it cost, handed from its task to the lake writer."""

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


def fetch_and_mask_range(
    config: FetchConfig, page_range: PageRange, run_date: dt.date
) -> MaskedRange:
    """Fetch a range of pages, check its kept values' vocabularies, mask it, hash its raw values;
    the raw rows end here."""
    started = time.perf_counter()
    fetched = fetch_range(config, page_range)
    source = fetched.take_table()
    fetched_at = time.perf_counter()
    check_vocabulary(source, page_range.label)
    table = mask_pii(source, run_date, hash_key())
    masked_at = time.perf_counter()
    secrets = secret_hashes(source)
    del source  # before the task returns: nothing raw is part of its result
    return MaskedRange(
        table=table,
        secrets=secrets,
        pages=fetched.pages,
        attempts=fetched.attempts,
        retries=fetched.retries,
        signatures=fetched.signatures,
        seconds_fetch=fetched_at - started,
        seconds_mask=masked_at - fetched_at,
        seconds_hash=time.perf_counter() - masked_at,
    )


fetch_and_mask_range_task = as_task(
    fetch_and_mask_range, task_run_name="fetch and mask {page_range.label}"
)


def range_retry_options(config: FetchConfig) -> dict[str, Any]:
    """The fetch task's retry options for a run: a range retried alone, and only when a retry
    can help (a transient cause, with the run's deadline still ahead of the retry)."""

    def retry_if_transient(task: Any, task_run: Any, state: State[Any]) -> bool:
        try:
            state.result()
        except Exception as exc:  # the task's failure; anything else is not ours to retry
            if not getattr(exc, "transient", False):
                return False
            left = run_time_left(config)
            return left is None or left > config.range_retry_delay
        return False

    return {
        "retries": config.range_retries,
        "retry_delay_seconds": config.range_retry_delay,
        "retry_condition_fn": retry_if_transient,
    }
