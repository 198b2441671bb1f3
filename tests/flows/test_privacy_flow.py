"""Privacy steps in a real run: a planted leak fails the run; a clean run scans clean."""

from __future__ import annotations

import datetime as dt
import logging

import duckdb
import pytest

import flows.user_metrics
import tasks.ingest.ranges
import tasks.reporting.compose
from flows.user_metrics import user_metrics_pipeline
from tasks.ingest.fetch import close_clients
from tasks.privacy.leak_scan import LeakError
from tests.helpers import served_records

RUN_DATE = dt.date(2026, 9, 30)


@pytest.fixture(autouse=True)
def _fresh_clients():
    yield
    close_clients()


def failed_run_row(db) -> tuple:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "select status, leak_hits, leak_hit_fields, failed_stage from pipeline_runs"
            " where status = 'failed'"
        ).fetchone()


def test_a_raw_value_in_the_log_fails_the_run(api, pipeline_env, prefect_storage, monkeypatch):
    real_mask = tasks.ingest.ranges.mask_pii

    def leaky_mask(source, run_date, key):
        # the kind of debug line someone might add one day
        logging.getLogger("tasks.ingest.mask").warning("first email: %s", source.column("email")[0])
        return real_mask(source, run_date, key)

    monkeypatch.setattr(tasks.ingest.ranges, "mask_pii", leaky_mask)
    state = user_metrics_pipeline(
        api_url=api.base_url, records=300, run_date=RUN_DATE, return_state=True
    )
    error = state.result(raise_on_failure=False)
    assert isinstance(error, LeakError)
    assert "run log" in str(error) and "email" in str(error)
    assert "@" not in str(error)  # the leaked address itself is never repeated
    status, hits, fields, step = failed_run_row(pipeline_env / "db/faker.duckdb")
    assert (status, step) == ("failed", "verify") and hits >= 1 and "email" in fields


def test_a_raw_value_in_an_artifact_fails_the_run(api, pipeline_env, prefect_storage, monkeypatch):
    planted: list[str] = []

    def note_naming_someone(k: int) -> str:
        # Composed after the fetch: the surname of the first record the server says it served.
        if not planted:
            planted.append(served_records(api)[0]["lastname"])
        return f"Reviewed by {planted[0]}."

    monkeypatch.setattr(tasks.reporting.compose, "small_cell_note", note_naming_someone)
    state = user_metrics_pipeline(
        api_url=api.base_url, records=200, run_date=RUN_DATE, seed=3, return_state=True
    )
    error = state.result(raise_on_failure=False)
    assert isinstance(error, LeakError)
    (name,) = planted
    assert "user-metrics-report" in str(error) and name not in str(error)
    assert failed_run_row(pipeline_env / "db/faker.duckdb")[1] >= 1


def test_a_raw_value_in_the_data_docs_fails_the_run(
    api, pipeline_env, prefect_storage, monkeypatch
):
    real_load = flows.user_metrics.load
    planted: list[str] = []

    def load_after_a_leaky_render(cfg, run, staged, analytical):
        # As if GX rendered a failing value into this run's page (a result format gone wrong).
        site = pipeline_env / "gx/data_docs/validations"
        page = sorted(site.rglob(f"run-date-{RUN_DATE}/**/*.html"))[0]
        planted.append(served_records(api)[0]["email"])
        page.write_text(page.read_text() + f"<td>{planted[0]}</td>")
        return real_load(cfg, run, staged, analytical)

    monkeypatch.setattr(flows.user_metrics, "load", load_after_a_leaky_render)
    state = user_metrics_pipeline(
        api_url=api.base_url, records=200, run_date=RUN_DATE, seed=4, return_state=True
    )
    error = state.result(raise_on_failure=False)
    assert isinstance(error, LeakError), repr(error)
    (email,) = planted
    assert "Data Docs" in str(error) and email not in str(error), str(error)
    status, hits, _, step = failed_run_row(pipeline_env / "db/faker.duckdb")
    assert (status, step) == ("failed", "verify") and hits >= 1
    # The page holding it is gone; the rest of the site stays.
    gx_files = [p for p in (pipeline_env / "gx").rglob("*") if p.is_file()]
    assert gx_files and not [p for p in gx_files if email.encode() in p.read_bytes()]


def test_clean_run_reaches_k_in_the_extract(api, pipeline_env, prefect_storage):
    summary = user_metrics_pipeline(api_url=api.base_url, records=3000, run_date=RUN_DATE)
    assert summary["leak_hits"] == 0 and summary["leak_outputs_scanned"] >= 10
    assert summary["extract_k_min"] >= summary["privacy_k"] == 5
    assert summary["k_min"] >= 1 and 0 <= summary["share_below_k"] <= 1
    with duckdb.connect(str(pipeline_env / "db/faker.duckdb"), read_only=True) as con:
        (smallest,) = con.execute(
            "select min(n) from (select count(*) as n from persons_shareable"
            " where run_date = ? group by all_columns_but_run_date)".replace(
                "all_columns_but_run_date", "gender, age_group, region, email_domain"
            ),
            [RUN_DATE],
        ).fetchone()
        domains = {
            d
            for (d,) in con.execute(
                "select distinct email_domain from persons_anonymized where run_date = ?",
                [RUN_DATE],
            ).fetchall()
        }
    assert smallest >= 5
    assert {"gmail.com", "hotmail.com", "yahoo.com", "other"} <= domains
