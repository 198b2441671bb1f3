"""Page planning: the API has no page parameter, so a "page" is one seeded request of ours."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
from dataclasses import dataclass

from tasks.common.inputs import MAX_SEED, check_page_size, check_records


@dataclass(frozen=True)
class Page:
    """One request: `quantity` records generated from `seed`."""

    index: int
    quantity: int
    seed: int


@dataclass(frozen=True)
class PageRange:
    """Consecutive pages fetched by one task run."""

    index: int
    pages: tuple[Page, ...]

    @property
    def records(self) -> int:
        """Records this range should yield."""
        return sum(page.quantity for page in self.pages)

    @property
    def label(self) -> str:
        """Human name of the range, e.g. `pages 0-3`."""
        first, last = self.pages[0].index, self.pages[-1].index
        return f"page {first}" if first == last else f"pages {first}-{last}"


def run_seed_for(run_date: dt.date, seed: int | None) -> int:
    """The run's seed: the given one, else one derived from the run date (stable across reruns).

    Public on purpose: the page seeds themselves need the seed key (`page_seed`).
    """
    if seed is not None:
        return seed
    digest = hashlib.sha256(f"run-date:{run_date.isoformat()}".encode()).digest()
    return _positive(digest)


def seed_key(pseudonym_key: bytes) -> bytes:
    """The key page seeds are derived with: one of its own, derived from the pseudonym key.

    Seeds anyone could recompute let anyone replay a date's requests and match the source's
    records to lake rows, and so to their person_key; with keyed seeds only the key holder can.
    A separate derived key means a seed never helps toward the pseudonym key itself.
    """
    return hmac.new(pseudonym_key, b"faker-api-dataflow page seeds", hashlib.sha256).digest()


def page_seed(key: bytes, run_seed: int, index: int) -> int:
    """Seed of page `index`: an HMAC of the run seed under the seed key, never 0 (the API ignores
    `_seed=0`)."""
    return _positive(hmac.new(key, f"{run_seed}:{index}".encode(), hashlib.sha256).digest())


def _positive(digest: bytes) -> int:
    return int.from_bytes(digest[:4], "big") % MAX_SEED + 1


def plan_pages(records: int, page_size: int, run_seed: int, key: bytes) -> list[Page]:
    """Split `records` into pages of `page_size`; the last page carries the remainder."""
    check_records(records)
    check_page_size(page_size)
    count = math.ceil(records / page_size)
    return [
        Page(
            index=i,
            quantity=min(page_size, records - i * page_size),
            seed=page_seed(key, run_seed, i),
        )
        for i in range(count)
    ]


# Pages per fetch task worth a task run: a task run costs the flow's own time (state changes,
# events, a mask task after it) about as much as fetching a page from a nearby server does.
PAGES_PER_RANGE = 4


def range_count(pages: int, concurrency: int, max_ranges: int) -> int:
    """How many fetch tasks: enough to keep `concurrency` requests in flight, and few enough that
    each carries about PAGES_PER_RANGE pages; never more than `max_ranges` or the pages."""
    wanted = max(concurrency, math.ceil(pages / PAGES_PER_RANGE))
    return max(1, min(pages, max_ranges, wanted))


def group_ranges(pages: list[Page], max_ranges: int) -> list[PageRange]:
    """Group pages into at most `max_ranges` contiguous ranges of near-equal size."""
    if max_ranges < 1:
        raise ValueError("max_ranges must be >= 1")
    n = min(len(pages), max_ranges)
    base, extra = divmod(len(pages), n) if n else (0, 0)
    ranges, start = [], 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        ranges.append(PageRange(index=i, pages=tuple(pages[start : start + size])))
        start += size
    return ranges
