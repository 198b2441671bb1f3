"""The DuckDB file: one connection at a time under its locks, and the transaction helper."""

from __future__ import annotations

import datetime
import fcntl
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import duckdb

from tasks.common.concurrency import holding_slot
from tasks.common.errors import PipelineError
from tasks.common.logs import run_logger


def connect(db_path: Path) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) the DuckDB database file, creating its directory first."""
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(str(db_path))


class DatabaseBusyError(PipelineError):
    """Another run held the DuckDB file for longer than the lock timeout."""

    transient = True  # the other run finishes; a later attempt gets the file


@contextmanager
def open_db(
    db_path: Path, timeout: float = 600.0, limit: str | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection held under the DuckDB file's locks, so concurrent runs wait their turn.

    DuckDB allows one process per file (reading or writing) and fails at once otherwise; the
    locks turn that failure into a bounded wait. `limit` names a Prefect global concurrency limit
    of one slot, which holds across hosts and shows in the UI; the exclusive file lock beside the
    file guards this host whatever the server, and the OS drops it when a process dies.
    """
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with ExitStack() as held:
        try:
            held.enter_context(holding_slot(limit, timeout))
        except TimeoutError:
            raise DatabaseBusyError(
                f"{db_path} is busy: concurrency limit {limit!r} stayed taken for over "
                f"{timeout:.0f}s (DUCKDB_LOCK_TIMEOUT_SECONDS)"
            ) from None
        held.enter_context(_file_lock(db_path, deadline, timeout))
        yield held.enter_context(connect(db_path))


@contextmanager
def _file_lock(db_path: Path, deadline: float, timeout: float) -> Iterator[None]:
    """The exclusive lock on `<file>.lock`, waited for until `deadline`."""
    with open(db_path.with_name(db_path.name + ".lock"), "a+") as lock:
        waiting = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    waiting = True
                    run_logger(__name__).info(
                        "waiting for %s: another run holds it (up to %.0fs, "
                        "DUCKDB_LOCK_TIMEOUT_SECONDS)",
                        db_path.name,
                        timeout,
                    )
                if time.monotonic() >= deadline:
                    raise DatabaseBusyError(
                        f"{db_path} is busy: another run held it for over {timeout:.0f}s "
                        "(DUCKDB_LOCK_TIMEOUT_SECONDS)"
                    ) from None
                time.sleep(0.05)  # polling a lock: flock has no timed wait
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def utc_now() -> datetime.datetime:
    """Now, as naive UTC."""
    # Timestamp columns hold naive UTC so they do not depend on the session's time zone setting.
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Begin; commit if the block ends normally, roll back (and re-raise) otherwise."""
    con.begin()
    try:
        yield
    except BaseException:
        con.rollback()
        raise
    con.commit()
