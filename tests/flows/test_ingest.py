"""The flow under a real Prefect test harness against the real local API (issue: ingestion)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from flows.user_metrics import user_metrics_pipeline
from tasks.common.schemas import MASK, RAW_SCHEMA
from tasks.ingest.fetch import close_clients
from tests.helpers import file_bytes, leaked, parquet_cells, raw_values, served_records

RUN_DATE = dt.date(2026, 11, 20)


@pytest.fixture(autouse=True)
def _fresh_clients():
    yield
    close_clients()


def test_flow_writes_exactly_the_records_masked(api, pipeline_env, prefect_storage):
    summary = user_metrics_pipeline(
        api_url=api.base_url, records=2500, page_size=1000, run_date=RUN_DATE, seed=5
    )
    path = Path(summary["lake_file"])
    assert path == pipeline_env / "lake/raw/2026/11/20/persons.parquet"
    table = pq.read_table(path)
    assert table.num_rows == 2500 == summary["records_fetched"]
    assert table.schema.remove_metadata() == RAW_SCHEMA
    assert set(table.column("firstname").to_pylist()) == {MASK}
    assert len(table.column("person_key").unique()) == 2500
    assert summary["pages"] == 3 and summary["retries"] == 0

    # a rerun of the date replaces the file
    user_metrics_pipeline(
        api_url=api.base_url, records=700, page_size=1000, run_date=RUN_DATE, seed=5
    )
    assert pq.read_table(path).num_rows == 700
    assert [p.name for p in path.parent.iterdir()] == ["persons.parquet"]


def test_faults_recover_to_a_complete_batch(start_api, pipeline_env, prefect_storage, monkeypatch):
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "12")
    server = start_api(fail_first=1, truncate_rate=0.2, reset_rate=0.1, fault_seed=4)
    summary = user_metrics_pipeline(
        api_url=server.base_url, records=1500, page_size=100, run_date=RUN_DATE
    )
    assert summary["records_fetched"] == 1500
    assert summary["retries"] >= 15  # every page failed at least once
    assert pq.read_table(summary["lake_file"]).num_rows == 1500


def test_no_raw_value_reaches_the_lake_or_prefect_results(api, pipeline_env, prefect_storage):
    summary = user_metrics_pipeline(
        api_url=api.base_url, records=3000, page_size=1000, run_date=RUN_DATE, seed=77
    )
    served = served_records(api)
    secrets = raw_values(served, RUN_DATE)
    assert len(secrets) > 10_000
    lake = pipeline_env / "lake"
    assert not leaked(secrets, parquet_cells(lake), file_bytes(lake))
    assert not leaked(secrets, set(), file_bytes(prefect_storage))
    assert summary["records_fetched"] == 3000


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ({"down": True}, r"page \d+ failed after 3 attempts; last cause: HTTP 503"),
        ({"drift": ("county_code",)}, r"field 'address\.country_code' is missing"),
    ],
)
def test_failed_run_names_the_cause_and_writes_nothing(
    start_api, pipeline_env, prefect_storage, monkeypatch, capsys, faults, message
):
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "3")
    server = start_api(**faults)
    code = main(
        [
            "--api-url",
            server.base_url,
            "--records",
            "250",
            "--page-size",
            "100",
            "--run-date",
            RUN_DATE.isoformat(),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ")
    assert __import__("re").search(message, err), err
    assert not [p for p in (pipeline_env / "lake").rglob("*") if p.is_file()]


def test_not_found_is_not_retried(api, pipeline_env, prefect_storage, capsys):
    wrong = api.base_url.replace("/api/v2", "/api/v9")
    code = main(["--api-url", wrong, "--records", "10", "--run-date", RUN_DATE.isoformat()])
    assert code == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert api.stats()["total"] == 1
    assert not list((pipeline_env / "lake").rglob("*.parquet"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--records", "0"], "records=0"),
        (["--records", "-3"], "records=-3"),
        (["--page-size", "1001"], "page_size=1001"),
        (["--page-size", "0"], "page_size=0"),
        (["--run-date", "2026-02-30"], "'2026-02-30'"),
        (["--run-date", "tomorrow"], "'tomorrow'"),
        (["--api-url", "ftp://example.org"], "ftp://example.org"),
    ],
)
def test_bad_input_fails_before_any_request(api, pipeline_env, capsys, args, message):
    base = ["--api-url", api.base_url, "--records", "10", "--run-date", RUN_DATE.isoformat()]
    code = main(base + args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err
    assert len(err.splitlines()) == 1
    assert api.stats()["total"] == 0
    assert not (pipeline_env / "lake").exists()


def test_unreachable_url_fails_before_any_write(api, pipeline_env, capsys):
    url = api.base_url
    api.stop()
    code = main(["--api-url", url, "--records", "10"])
    err = capsys.readouterr().err
    assert code == 2 and "unreachable" in err
    assert not (pipeline_env / "lake").exists()


def test_missing_key_fails_clearly(api, pipeline_env, monkeypatch, capsys):
    from tasks.common.secrets import hash_key

    monkeypatch.delenv("PII_HASH_KEY")
    hash_key.cache_clear()
    code = main(["--api-url", api.base_url, "--records", "10"])
    assert code == 2 and "PII_HASH_KEY" in capsys.readouterr().err
    monkeypatch.setenv("PII_HASH_KEY", "")
    from tasks.common.settings import get_settings

    get_settings.cache_clear()
    hash_key.cache_clear()
    assert main(["--api-url", api.base_url, "--records", "10"]) == 2
    assert "empty" in capsys.readouterr().err
    assert api.stats()["total"] == 0
