import datetime as dt
import hashlib
import hmac

import pytest

from tasks.common.inputs import InputError
from tasks.ingest.plan import (
    group_ranges,
    page_seed,
    plan_pages,
    range_count,
    run_seed_for,
    seed_key,
)

KEY = seed_key(b"test-hmac-key-0123456789abcdef")


@pytest.mark.parametrize(
    ("records", "page_size", "quantities"),
    [
        (30_000, 1000, [1000] * 30),
        (2500, 1000, [1000, 1000, 500]),
        (1, 1000, [1]),
        (999, 1000, [999]),
        (1000, 1000, [1000]),
        (1001, 1000, [1000, 1]),
        (7, 3, [3, 3, 1]),
        (5, 1, [1] * 5),
    ],
)
def test_plan_covers_exactly_the_records(records, page_size, quantities):
    pages = plan_pages(records, page_size, run_seed=42, key=KEY)
    assert [p.quantity for p in pages] == quantities
    assert [p.index for p in pages] == list(range(len(quantities)))
    assert sum(p.quantity for p in pages) == records


def test_page_seeds_are_distinct_nonzero_and_reproducible():
    pages = plan_pages(100_000, 100, run_seed=7, key=KEY)
    seeds = [p.seed for p in pages]
    assert len(set(seeds)) == len(seeds)
    assert all(1 <= s <= 2**31 - 1 for s in seeds)
    assert seeds == [p.seed for p in plan_pages(100_000, 100, run_seed=7, key=KEY)]
    assert seeds != [p.seed for p in plan_pages(100_000, 100, run_seed=8, key=KEY)]
    assert page_seed(KEY, 7, 0) == seeds[0]


def test_page_seeds_need_the_key():
    """Only the key holder can replay a date's requests: another key gives other seeds, and
    the seeds are an HMAC under a key of their own, never the pseudonym key itself."""
    pseudonym_key = b"test-hmac-key-0123456789abcdef"
    seeds = [p.seed for p in plan_pages(1000, 100, run_seed=7, key=KEY)]
    other = [p.seed for p in plan_pages(1000, 100, run_seed=7, key=seed_key(b"x" * 32))]
    assert not set(seeds) & set(other)
    assert pseudonym_key != KEY and len(KEY) == 32
    # Written out independently: HMAC-SHA-256 of "run_seed:index", first 4 bytes, 1..2**31-1.
    digest = hmac.new(KEY, b"7:0", hashlib.sha256).digest()
    assert seeds[0] == int.from_bytes(digest[:4], "big") % (2**31 - 1) + 1


def test_run_seed_derives_from_date_unless_given():
    day = dt.date(2026, 11, 25)
    assert run_seed_for(day, 5) == 5
    assert run_seed_for(day, None) == run_seed_for(day, None)
    assert run_seed_for(day, None) != run_seed_for(day + dt.timedelta(days=1), None)


@pytest.mark.parametrize(("records", "page_size"), [(0, 10), (-5, 10), (10, 0), (10, 1001)])
def test_plan_refuses_bad_input(records, page_size):
    with pytest.raises(InputError):
        plan_pages(records, page_size, run_seed=1, key=KEY)


@pytest.mark.parametrize(
    ("n_pages", "max_ranges", "sizes"),
    [
        (30, 32, [1] * 30),
        (1000, 32, [32] * 8 + [31] * 24),
        (3, 1, [3]),
        (10, 4, [3, 3, 2, 2]),
    ],
)
def test_group_ranges_is_contiguous_and_complete(n_pages, max_ranges, sizes):
    pages = plan_pages(n_pages, 1, run_seed=1, key=KEY)
    ranges = group_ranges(pages, max_ranges)
    assert [len(r.pages) for r in ranges] == sizes
    flat = [p for r in ranges for p in r.pages]
    assert flat == pages
    assert ranges[0].label.startswith("page")


@pytest.mark.parametrize(
    ("n_pages", "concurrency", "max_ranges", "expected"),
    [
        (30, 8, 32, 8),  # 30,000 records: 8 ranges of ~4 pages keep 8 requests in flight
        (1000, 8, 32, 32),  # 1,000,000 records: capped at FETCH_MAX_TASKS
        (100, 8, 32, 25),  # about 4 pages per range
        (5, 8, 32, 5),  # never more ranges than pages
        (30, 8, 4, 4),  # never more than max_ranges
        (1, 1, 1, 1),
    ],
)
def test_range_count_keeps_concurrency_busy_with_few_task_runs(
    n_pages, concurrency, max_ranges, expected
):
    assert range_count(n_pages, concurrency, max_ranges) == expected
