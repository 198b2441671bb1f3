"""The DuckDB file lock: a second process waits for the first instead of failing."""

import subprocess
import sys

import pytest

from tasks.storage.database import DatabaseBusyError, open_db

HOLDER = """
import sys, time
from pathlib import Path
from tasks.storage.database import open_db
with open_db(Path(sys.argv[1]), 5) as con:
    con.execute("create table if not exists t(x int)")
    print("holding", flush=True)
    sys.stdin.readline()  # hold the lock until the test says so
"""


@pytest.mark.slow
def test_second_process_waits_then_proceeds(tmp_path):
    db = tmp_path / "db" / "x.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with (
            pytest.raises(DatabaseBusyError, match="DUCKDB_LOCK_TIMEOUT_SECONDS"),
            open_db(db, timeout=0.3),
        ):
            pass
        holder.stdin.write("\n")
        holder.stdin.flush()
        with open_db(db, timeout=30) as con:
            con.execute("insert into t values (1)")
            assert con.execute("select count(*) from t").fetchone() == (1,)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    db = tmp_path / "x.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdout.readline().strip() == b"holding"
    holder.kill()
    holder.wait()
    with open_db(db, timeout=10) as con:
        assert con.execute("select count(*) from t").fetchone() == (0,)
