"""Command-line parsing and printing for `python -m flows.user_metrics` (no Prefect here)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, NoReturn


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error: ...` line (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None, description: str | None) -> argparse.Namespace:
    """Flags of the pipeline CLI; a single date or a backfill range."""
    parser = _OneLineParser(prog="python -m flows.user_metrics", description=description)
    parser.add_argument("--api-url", help="Faker API base URL (default: FAKER_API_URL)")
    parser.add_argument("--records", type=int, help="records to fetch (default: FAKER_RECORDS)")
    parser.add_argument("--page-size", type=int, help="records per request, 1..1000")
    parser.add_argument("--seed", type=int, help="run seed (default: derived from the run date)")
    parser.add_argument("--locale", help="Faker locale (default: FAKER_LOCALE)")
    parser.add_argument("--run-date", help="YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--start-date", help="backfill: first date, YYYY-MM-DD")
    parser.add_argument("--end-date", help="backfill: last date, YYYY-MM-DD")
    parser.add_argument("--force", action="store_true", help="backfill: reload loaded dates too")
    parser.add_argument(
        "--check",
        action="store_true",
        help="find and repair what killed runs left (staged files, dead runs, dates whose lake "
        "file and DuckDB rows differ); print the command for what only a rerun repairs",
    )
    args = parser.parse_args(argv)
    backfill = args.start_date is not None or args.end_date is not None
    if backfill and args.run_date:
        parser.error("--run-date cannot be combined with --start-date/--end-date")
    if backfill and (args.start_date is None or args.end_date is None):
        parser.error("a backfill needs both --start-date and --end-date")
    if args.force and not backfill:
        parser.error("--force applies to a backfill (--start-date/--end-date)")
    if args.check and (backfill or args.run_date):
        parser.error("--check looks at every date; it takes no dates")
    args.backfill = backfill
    return args


class _OneLine(logging.Formatter):
    """A console formatter that leaves out tracebacks: a CLI user reads one line per event.

    The record is put back as it was, so the Prefect API handler (the UI) keeps them.
    """

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def one_line_console(logger_name: str = "") -> None:
    """Make the console handlers of `logger_name` (root: where Prefect puts its own) print no
    tracebacks."""
    for handler in logging.getLogger(logger_name).handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler.formatter, _OneLine
        ):
            handler.setFormatter(_OneLine(handler.formatter))


def print_summary(summary: dict[str, Any], artifacts: tuple[str, ...]) -> None:
    """What a person wants after a run: where things went, the answers, the artifacts."""
    print(f"Run date      {summary['run_date']}")
    print(f"Lake file     {summary['lake_file']}")
    print(f"DuckDB        {summary['duckdb_path']} ({summary['records_loaded']:,} rows loaded)")
    print(
        f"Records       {summary['records_fetched']:,} of {summary['records_requested']:,} "
        f"in {summary['pages']} pages, {summary['retries']} retries"
    )
    print(f"Seconds       {summary['seconds_total']:.1f}")
    print(
        f"Privacy       k_min {summary['k_min']} in the table, {summary['extract_k_min']} in the "
        f"shareable extract (k = {summary['privacy_k']}); leak scan: "
        f"{summary['leak_outputs_scanned']} outputs, {summary['leak_hits']} hits"
    )
    print(f"Extract       {summary['extract_file']}")
    print("Answers")
    for answer in summary["answers"]:
        print(f"  - {answer}")
    print("Artifacts     " + ", ".join(artifacts))


def print_backfill(outcome: dict[str, str]) -> None:
    """One line per date of a backfill."""
    for day, result in outcome.items():
        print(f"{day}  {result}")
