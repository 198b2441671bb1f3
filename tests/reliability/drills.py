"""What the drills read back: a date's whole stored state, the Prefect store, the run's output.

Everything here reads from disk or through the Prefect client, as a user would; nothing asks
the pipeline what it did.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

from tests.helpers import file_bytes

# Every artifact key a run publishes (and the failure report's).
KEYS = (
    "germany-gmail-share",
    "top-gmail-countries",
    "gmail-users-over-60",
    "user-metrics-report",
    "validation-results",
    "privacy-report",
    "schema-drift",
)
DATE_TABLES = (
    "persons_anonymized",
    "persons_shareable",
    "report_germany_gmail_share",
    "report_top_gmail_countries",
    "report_gmail_users_over_60",
    "report_gmail_by_age_group",
)


def zone_file(lake: Path, zone: str, run_date: dt.date) -> Path:
    """lake/zone/YYYY/MM/DD/persons.parquet."""
    return lake / zone / f"{run_date:%Y}" / f"{run_date:%m}" / f"{run_date:%d}" / "persons.parquet"


def file_run(path: Path) -> str | None:
    """The flow run id in a lake file's metadata, None if there is no file."""
    if not path.exists():
        return None
    value = (pq.read_schema(path).metadata or {}).get(b"flow_run_id")
    return value.decode() if value else None


@dataclasses.dataclass(frozen=True)
class StoredDate:
    """Everything stored for one run date: file bytes, and every column of every row."""

    raw: bytes | None
    extract: bytes | None
    quarantine: bytes | None
    tables: dict[str, tuple[tuple, ...]]

    def runs(self, table: str) -> set[str]:
        """Flow run ids of a table's rows (the last column of every date table)."""
        return {row[-1] for row in self.tables[table]}


def stored_date(lake: Path, db: Path, run_date: dt.date) -> StoredDate:
    """The run date's lake files (bytes) and DuckDB rows (every column, sorted)."""

    def read(zone: str) -> bytes | None:
        path = zone_file(lake, zone, run_date)
        return path.read_bytes() if path.exists() else None

    tables = {}
    with duckdb.connect(str(db), read_only=True) as con:
        for table in DATE_TABLES:
            columns = [
                c
                for (c,) in con.execute(f"select name from pragma_table_info('{table}')").fetchall()
            ]
            ordered = [c for c in columns if c != "flow_run_id"] + ["flow_run_id"]
            rows = con.execute(
                f"select {', '.join(ordered)} from {table} where run_date = ? order by all",
                [run_date],
            ).fetchall()
            tables[table] = tuple(rows)
    return StoredDate(read("raw"), read("shareable"), read("quarantine"), tables)


def run_row(db: Path, flow_run_id: str) -> dict | None:
    """The run's pipeline_runs row as a dict, None if it has none."""
    with duckdb.connect(str(db), read_only=True) as con:
        cursor = con.execute("select * from pipeline_runs where flow_run_id = ?", [flow_run_id])
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    return dict(zip(names, rows[0], strict=True)) if rows else None


def latest_run_id(db: Path) -> str:
    """The flow run id of the most recently started run in pipeline_runs."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "select flow_run_id from pipeline_runs order by started_at desc limit 1"
        ).fetchone()[0]


def latest_artifacts(keys: Iterable[str] = KEYS) -> dict[str, tuple[str, str]]:
    """Key -> (artifact id, flow run id) of the latest version of each key, via the client."""
    latest = {}
    with get_client(sync_client=True) as client:
        for key in keys:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
            if found:
                latest[key] = (str(found[0].id), str(found[0].flow_run_id))
    return latest


def run_artifacts(flow_run_id: str) -> dict[str, str]:
    """Key -> data (as text) of every artifact one flow run created."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
    return {
        str(a.key or a.id): a.data if isinstance(a.data, str) else json.dumps(a.data) for a in found
    }


def run_logs(flow_run_id: str) -> list[str]:
    """Every log message of a flow run (and its task runs) in the Prefect API."""
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [log.message for log in logs]


def run_outputs(flow_run_id: str, stdout: str, stderr: str) -> dict[str, str]:
    """Everything a run showed, by place: its terminal output, log messages and artifacts."""
    return {
        "stdout": stdout,
        "stderr": stderr,
        **{f"log {i}": message for i, message in enumerate(run_logs(flow_run_id))},
        **{f"artifact {key}": data for key, data in run_artifacts(flow_run_id).items()},
    }


def prefect_store() -> bytes:
    """Every byte of the Prefect test database (with its WAL), as the server wrote it."""
    db = Path(PREFECT_API_DATABASE_CONNECTION_URL.value().split("///", 1)[-1])
    return b"".join(p.read_bytes() for p in db.parent.glob(f"{db.name}*") if p.is_file())


def places_holding(
    values: Iterable[str], lake: Path, db: Path, outputs: dict[str, str]
) -> list[str]:
    """Where any of `values` appears: lake bytes, DuckDB cells, Data Docs, the Prefect store,
    outputs."""
    values = [v for v in values if v]
    found = []
    lake_bytes = file_bytes(lake) if lake.exists() else b""
    cells = ""
    if db.exists():
        with duckdb.connect(str(db), read_only=True) as con:
            for (table,) in con.execute("select table_name from duckdb_tables()").fetchall():
                cells += repr(con.execute(f'select * from "{table}"').fetchall())
    # Parquet pages are compressed: read their cells too.
    for path in lake.rglob("*.parquet") if lake.exists() else []:
        cells += repr(pq.read_table(path).to_pylist())
    # Great Expectations' Data Docs and stored results, beside the lake (GX_DIR's default).
    gx_dir = lake.parent / "gx"
    gx_bytes = file_bytes(gx_dir) if gx_dir.exists() else b""
    store = prefect_store()
    for value in values:
        if value.encode() in lake_bytes:
            found.append(f"lake bytes: {value}")
        if value.encode() in gx_bytes:
            found.append(f"Data Docs or GX results: {value}")
        if value in cells:
            found.append(f"lake or DuckDB cells: {value}")
        if value.encode() in store:
            found.append(f"Prefect database: {value}")
        found += [f"{name}: {value}" for name, text in outputs.items() if value in text]
    return found


@contextmanager
def db_lock_held(db: Path) -> Iterator[None]:
    """Hold the pipeline's DuckDB file lock (`<db>.lock`), as another run would."""
    with open(db.with_name(db.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
