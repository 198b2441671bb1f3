"""The DuckDB file's cross-host lock: a Prefect global concurrency limit of one slot, held with the
file open. A holder on "another host" is simulated by a process whose file lock we cannot see
(another path): only the limit makes us wait. Real Prefect server (the session's test harness)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tasks.common.concurrency import server_limit
from tasks.storage.database import DatabaseBusyError, open_db

HOLDER = """
import sys
from pathlib import Path
from tasks.storage.database import open_db
with open_db(Path(sys.argv[1]), 60, sys.argv[2]):
    print("holding", flush=True)
    sys.stdin.readline()  # hold the slot until the test says so
"""


@pytest.fixture
def limit(prefect_storage) -> str:
    """A fresh limit of one slot on the harness's server."""
    from prefect.client.orchestration import get_client

    name = f"duckdb-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    return name


def test_the_limit_is_found_only_on_a_server_that_has_it(limit):
    assert server_limit(limit) == limit
    assert server_limit("no-such-limit") is None
    assert server_limit(limit, decaying=True) is None  # the request budget needs a slot decay


@pytest.mark.slow
def test_a_holder_elsewhere_makes_us_wait_through_the_limit(limit, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "elsewhere" / "x.duckdb"), limit],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    ours = tmp_path / "here" / "x.duckdb"
    try:
        assert holder.stdout.readline().strip() == "holding"
        with (
            pytest.raises(DatabaseBusyError, match=f"concurrency limit '{limit}'"),
            open_db(ours, timeout=2, limit=limit),
        ):
            pass
        # Without the limit, nothing here knows of the other holder.
        with open_db(ours, timeout=2) as con:
            con.execute("create table t(x int)")
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
        with open_db(ours, timeout=60, limit=limit) as con:
            assert con.execute("select count(*) from t").fetchone() == (0,)
    finally:
        holder.kill()
