"""The flow on a 2-worker local Dask cluster gives exactly what the default thread pool gives."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from flows.runners import make_task_runner
from flows.user_metrics import user_metrics_pipeline
from tasks.common.secrets import hash_key
from tasks.common.settings import get_settings
from tasks.ingest.fetch import close_clients
from tasks.storage.lake import raw_path

RUN_DATE = dt.date(2026, 9, 30)
PARAMS = {"records": 3000, "page_size": 500, "run_date": RUN_DATE, "seed": 77}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _fresh_clients():
    yield
    close_clients()


def _point_at(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    """Give a run its own lake and database; env, so Dask worker processes see it too."""
    monkeypatch.setenv("DATA_LAKE_DIR", str(root / "lake"))
    monkeypatch.setenv("DUCKDB_PATH", str(root / "db" / "faker.duckdb"))
    get_settings.cache_clear()
    hash_key.cache_clear()
    return root


def _stored(root: Path) -> tuple[list[tuple], list[dict]]:
    """persons_anonymized rows (sorted, without the run id) and the lake file's rows (sorted)."""
    with duckdb.connect(str(root / "db" / "faker.duckdb"), read_only=True) as con:
        rows = con.execute(
            "select person_key, run_date, gender, age_group, email_domain, country, country_code "
            "from persons_anonymized order by all"
        ).fetchall()
    lake = pq.read_table(raw_path(root / "lake", RUN_DATE))
    return rows, sorted(lake.to_pylist(), key=lambda row: row["person_key"])


def test_dask_runner_matches_thread_pool(
    api, pipeline_env, prefect_storage, monkeypatch: pytest.MonkeyPatch
):
    threads_root = _point_at(monkeypatch, pipeline_env / "threads")
    threaded = user_metrics_pipeline(api_url=api.base_url, **PARAMS)

    dask_root = _point_at(monkeypatch, pipeline_env / "dask")
    on_dask = user_metrics_pipeline.with_options(task_runner=make_task_runner("dask", None, 2))
    distributed = on_dask(api_url=api.base_url, **PARAMS)

    assert distributed["records_loaded"] == threaded["records_loaded"] == 3000
    assert distributed["answers"] == threaded["answers"]
    dask_rows, dask_lake = _stored(dask_root)
    thread_rows, thread_lake = _stored(threads_root)
    assert len(dask_rows) == 3000
    assert dask_rows == thread_rows
    assert dask_lake == thread_lake


def test_unknown_runner_is_refused():
    with pytest.raises(ValueError, match="not one of threads, dask"):
        make_task_runner("ray", None, 2)
