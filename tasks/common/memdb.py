"""One in-memory DuckDB database per process and a cursor per thread, for vectorized SQL on Arrow.

Opening an in-memory database costs ~20 ms, as much as masking 1,000 rows, so it is opened once.
Registered tables are per cursor, so concurrent tasks never see each other's rows. Nothing is
ever stored in the database itself: callers register an Arrow table, query it and unregister it.
Callers pair a query's rows with their input's by position (mask_pii, the leak scan's hashes),
which DuckDB guarantees only while insertion order is preserved: its default, pinned here.
"""

from __future__ import annotations

import os
import threading

import duckdb

from tasks.common.emails import DOMAIN_MACRO

_local = threading.local()
_database: tuple[int, duckdb.DuckDBPyConnection] | None = None
_database_lock = threading.Lock()


def cursor() -> duckdb.DuckDBPyConnection:
    """This thread's cursor on the process's in-memory database (a fresh one after a fork)."""
    global _database
    pid = os.getpid()
    current: duckdb.DuckDBPyConnection | None = getattr(_local, "cursor", None)
    if current is not None and _local.pid == pid:
        return current
    with _database_lock:
        if _database is None or _database[0] != pid:
            database = duckdb.connect(config={"preserve_insertion_order": True})
            database.execute(DOMAIN_MACRO).fetchall()  # the e-mail domain rule, for SQL files
            _database = (pid, database)
        current = _database[1].cursor()
        _local.cursor, _local.pid = current, pid
    return current
