"""The command line: `python -m flows.cli` (and `make run`, through flows/local_demo.py).

Flags come from the flows' own options (`tasks.common.inputs.RunOptions`), every input is checked
before Prefect starts, and every failure is one `error:` line: never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from pydantic import ValidationError

from tasks.common.errors import failure_text, redact
from tasks.common.inputs import (
    EARLIEST_RUN_DATE,
    MIN_DEADLINE_SECONDS,
    InputError,
    RunOptions,
    date_range,
    settings_error_line,
)
from tasks.common.run_config import checked_run_config
from tasks.common.secrets import withhold_key
from tasks.common.settings import get_settings
from tasks.quality import validator

# This module's own imports load neither Prefect nor GX (flows.server and the flow module, which
# load Prefect, are imported where they are used): run as `python -m flows.cli`, it starts the
# validator before any of them (the bottom of this file).


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error: ...` line (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _seconds(value: str) -> int:
    """argparse type for a run's deadline: a whole number of seconds, MIN_DEADLINE_SECONDS on."""
    if not value.strip().isdigit() or int(value) < MIN_DEADLINE_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a whole number of seconds >= {MIN_DEADLINE_SECONDS}"
        )
    return int(value)


def _option_type(name: str) -> type:
    annotation = str(RunOptions.model_fields[name].annotation)
    return int if "int" in annotation else str


def parse_args(argv: list[str] | None, description: str | None) -> argparse.Namespace:
    """Flags of the pipeline CLI: the run's options, then a single date or a backfill range."""
    parser = _OneLineParser(prog="python -m flows.cli", description=description)
    for name, info in RunOptions.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=_option_type(name), help=f"{info.description}")
    parser.add_argument(
        "--run-date", help=f"YYYY-MM-DD, from {EARLIEST_RUN_DATE} on (default: today, UTC)"
    )
    parser.add_argument("--start-date", help="backfill: first date, YYYY-MM-DD")
    parser.add_argument("--end-date", help="backfill: last date, YYYY-MM-DD")
    parser.add_argument("--force", action="store_true", help="backfill: reload loaded dates too")
    parser.add_argument(
        "--deadline-seconds",
        type=_seconds,
        help="stop the run if it takes longer (default: FLOW_TIMEOUT_SECONDS; for a backfill "
        "BACKFILL_TIMEOUT_SECONDS)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="find and repair what killed runs left (staged files, dead runs and their Prefect "
        "flow runs, chart browser temp folders, dates whose lake file and DuckDB rows differ); "
        "print the command for what only a rerun repairs",
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


def preflight(args: argparse.Namespace) -> dict[str, Any]:
    """The flow's parameters, once every input is checked: before Prefect starts, any request
    is made or anything is written."""
    from flows.runners import task_runner  # loads Prefect (see the imports above)

    settings = get_settings()
    # A runner refused (a clear-text DASK_ADDRESS, no dask extra) is bad input too.
    task_runner(settings)
    options = RunOptions(**{name: getattr(args, name) for name in RunOptions.model_fields})
    if args.backfill:
        days: list[dt.date] = date_range(args.start_date, args.end_date, settings.backfill_max_days)
        checked_run_config(settings, options, days[0])
        return {
            "start_date": days[0],
            "end_date": days[-1],
            "force": args.force,
            "options": options,
        }
    run_date = checked_run_config(settings, options, args.run_date).run_date
    return {**options.model_dump(), "run_date": run_date}


@contextmanager
def startup_budget() -> Iterator[int]:
    """Give Prefect's temporary API server the start-up budget of the settings; yields it."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as BUDGET
    from prefect.settings import temporary_settings

    # Prefect's own variable, read through Settings: a default longer than Prefect's 20 s.
    seconds = get_settings().prefect_server_ephemeral_startup_timeout_seconds
    with temporary_settings({BUDGET: seconds}):
        yield seconds


@contextmanager
def prefect_api() -> Iterator[int]:
    """The run's Prefect API: the local server (flows/server.py), started if need be, or the one
    Prefect is set to, or its temporary server with a realistic start-up budget; yields the
    start-up budget in seconds."""
    from flows.server import START_SECONDS, client_settings, server_for_run

    url = server_for_run()
    if url is None:
        with startup_budget() as budget:
            yield budget
        return
    from prefect.settings import temporary_settings

    settings = client_settings(url)
    # In the environment too: a local Dask cluster's workers are Prefect clients of their own,
    # and without it each would start a temporary server.
    os.environ.update({setting.name: value for setting, value in settings.items()})
    with temporary_settings(settings):
        yield int(START_SECONDS["server"])


def outside_flow_error(exc: BaseException, budget: int) -> str:
    """One line for a failure before or around the flow run (no traceback, no values)."""
    from flows.processes import ServiceError

    if isinstance(exc, ServiceError):  # one line of ours, naming the server's log
        return str(exc)
    if "ephemeral Prefect API server" in str(exc):
        return (
            f"Prefect's temporary API server did not start within {budget} s: raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or keep a local server "
            "(CLI_PREFECT_SERVER=background), or PREFECT_API_URL pointing at a running server"
        )
    return f"{failure_text(exc)} (before the flow run could record it)"


def run_check() -> int:
    """`--check`: repair what killed runs left; exit 1 if a date still needs a rerun."""
    from flows.leftovers import check_api, repair_leftovers
    from tasks.common.concurrency import server_limit
    from tasks.storage.database import open_db
    from tasks.storage.migrations import migrate
    from tasks.storage.recovery import check

    settings = get_settings()
    limit = server_limit(settings.duckdb_limit_name)
    with open_db(settings.duckdb_path, settings.duckdb_lock_timeout_seconds, limit) as con:
        migrate(con)
        findings = check(con, settings.data_lake_dir)
    with check_api() as unreachable:
        more, notes = repair_leftovers(
            "`--check`",
            settings.duckdb_path,
            None,
            unreachable,
            timeout=settings.duckdb_lock_timeout_seconds,
            limit=limit,
        )
    findings += more
    for finding in findings:
        print(finding.line())
    for note in notes:
        print(f"check: {note}")
    left = [f for f in findings if not f.repaired]
    repaired = len(findings) - len(left)
    print(f"check: {len(findings)} finding(s), {repaired} repaired, {len(left)} left")
    return 1 if left else 0


def run_flow(args: argparse.Namespace, params: dict[str, Any]) -> int:
    """Run the pipeline or the backfill flow; print its summary or its one error line."""
    from flows.user_metrics import user_metrics_backfill, user_metrics_pipeline

    # The deployments' own limits, so a run from a terminal cannot hang for days either.
    settings = get_settings()
    limit = "BACKFILL_TIMEOUT_SECONDS" if args.backfill else "FLOW_TIMEOUT_SECONDS"
    deadline = args.deadline_seconds or (
        settings.backfill_timeout_seconds if args.backfill else settings.flow_timeout_seconds
    )
    budget = settings.prefect_server_ephemeral_startup_timeout_seconds
    try:
        with prefect_api() as budget:
            flow = user_metrics_backfill if args.backfill else user_metrics_pipeline
            state = flow.with_options(timeout_seconds=deadline)(**params, return_state=True)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"error: {outside_flow_error(exc, budget)}", file=sys.stderr)
        return 1
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        text = (
            failure_text(error) if isinstance(error, BaseException) else redact(str(state.message))
        )
        if isinstance(error, TimeoutError):  # Prefect stopped the run at its timeout_seconds
            text = (
                f"the run exceeded its {deadline} s deadline ({limit} / --deadline-seconds): "
                "raise it if the run was making progress; the run-failure artifact says where "
                "it stopped and what the date holds"
            )
        print(f"error: {text}", file=sys.stderr)
        return 1
    if args.backfill:
        print_backfill(state.result())
    else:
        print_summary(state.result())
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit 0 on success, 2 on bad input, 1 on a failed run; errors in one line.

    No traceback reaches the user: every failure, inside the flow run or around it, is one
    `error: ...` line naming the cause and what to do.
    """
    try:
        # Before the flow module imports Prefect, which reads some of the same variables
        # (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS) and refuses a bad one with a traceback.
        get_settings()
    except InputError as exc:  # a bad setting, already one line naming it
        return _refused(str(exc))
    from flows.user_metrics import user_metrics_pipeline

    args = parse_args(argv, user_metrics_pipeline.__doc__)
    one_line_console()  # Prefect prints a failed run's traceback; the UI keeps it, not the terminal
    try:
        if args.check:
            return run_check()
        params = preflight(args)
        withhold_key()  # before Prefect's server or Chromium start: children never inherit it
    except ValidationError as exc:  # pydantic: a bad value of a model built from the flags
        return _refused(settings_error_line(exc))
    except (InputError, RuntimeError, ValueError) as exc:
        # Nothing has been fetched yet: the message is about the user's own input.
        lines = str(exc).strip().splitlines()
        return _refused(redact(lines[0] if lines else type(exc).__name__))
    return run_flow(args, params)


def _refused(line: str) -> int:
    """Bad input: its one `error:` line; exit code 2."""
    print(f"error: {line}", file=sys.stderr)
    return 2


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


def print_summary(summary: dict[str, Any]) -> None:
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
    if summary.get("data_docs"):
        print(f"Data Docs     {summary['data_docs']}")
    print("Answers")
    for answer in summary["answers"]:
        print(f"  - {answer}")
    # The keys the run created: an older date than the newest committed publishes under
    # `<key>-<date>`.
    print("Artifacts     " + ", ".join(summary["artifacts"]))


def print_backfill(outcome: dict[str, str]) -> None:
    """One line per date of a backfill."""
    for day, result in outcome.items():
        print(f"{day}  {result}")


if __name__ == "__main__":
    # GX's import, the longest part of start-up, runs in the validator's process on the other
    # core while this one imports Prefect and the flow (main's first import), not after them.
    validator.start()
    sys.exit(main())
