"""Ingest: plan the pages, fetch them from the Faker API with retries, check their shape and mask
them; raw rows exist only here, in memory, and end in the task that fetched them."""

from tasks.ingest.plan import PageRange, group_ranges, plan_pages, range_count
from tasks.ingest.ranges import MaskedRange, fetch_and_mask_range_task, range_retry_options

__all__ = [
    "MaskedRange",
    "PageRange",
    "fetch_and_mask_range_task",
    "group_ranges",
    "plan_pages",
    "range_count",
    "range_retry_options",
]
