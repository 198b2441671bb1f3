"""A fourth report is one SQL file and one registry entry (and a migration, as it stores rows):
registered here, it is stored, suppressed, composed and published by the unchanged pipeline."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

from flows.user_metrics import user_metrics_pipeline
from tasks.common import reports
from tasks.common.reports import Report
from tasks.ingest.fetch import close_clients
from tasks.reporting.queries import report_rows
from tasks.storage.database import connect
from tasks.storage.migrations import migrate
from tests.builders import analytical_batch
from tests.helpers import committed_batch, served_records

RUN_DATE = dt.date(2026, 11, 2)
NEW_REPORT_DIR = Path(__file__).resolve().parent / "new_report"
# The migration the report would add as tasks/sql/NNNN_name.sql (a file here, so that the
# product's migrations stay the product's).
TABLE_SQL = NEW_REPORT_DIR / "report_hotmail_by_country_table.sql"
K = 2  # counts of 1 are hidden as `<2`; a batch of 400 spreads Hotmail users thinly


def hotmail_report(**changes: object) -> Report:
    """The new report's declaration: the one entry it takes."""
    fields: dict[str, object] = {
        "key": "hotmail-by-country",
        "sql": "report_hotmail_by_country",
        "columns": ("country", "hotmail_users"),
        "counts": ("hotmail_users",),
        "title": "Hotmail users per country",
        "description": "Hotmail users per country, run {run_date}.",
        "order_by": ("hotmail_users desc", "country"),
        "sql_dir": NEW_REPORT_DIR,
    }
    return Report(**(fields | changes))  # type: ignore[arg-type]


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The product's registry, extended by a test for its own duration only."""
    monkeypatch.setattr(reports, "_REGISTRY", dict(reports._REGISTRY))


@pytest.fixture(autouse=True)
def _fresh_clients():
    yield
    close_clients()


def _artifacts(flow_run_id: str, keys: list[str]) -> dict[str, object]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
            flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}),
        )
    return {a.key: a for a in found}


def test_a_registered_report_is_stored_suppressed_composed_and_published(
    registry, api, pipeline_env, prefect_storage, monkeypatch
) -> None:
    from tasks.common.settings import get_settings

    monkeypatch.setenv("PRIVACY_K", str(K))
    get_settings.cache_clear()
    new = reports.register(hotmail_report())
    db = pipeline_env / "db" / "faker.duckdb"
    db.parent.mkdir(parents=True)
    with connect(db) as con:
        con.execute(TABLE_SQL.read_text(encoding="utf-8"))

    summary = user_metrics_pipeline(
        api_url=api.base_url, records=400, page_size=200, run_date=RUN_DATE, seed=22
    )

    # Exact counts, computed from what the server served, are what DuckDB keeps.
    served = served_records(api)
    hotmail = Counter(
        r["address"]["country"]
        for r in served
        if r["email"].rsplit("@", 1)[-1].lower() == "hotmail.com"
    )
    exact = sorted(hotmail.items(), key=lambda item: (-item[1], item[0]))
    with duckdb.connect(str(db), read_only=True) as con:
        stored = con.execute(
            "select country, hotmail_users from report_hotmail_by_country where run_date = ?"
            " order by hotmail_users desc, country",
            [RUN_DATE],
        ).fetchall()
    assert stored == exact
    # The batch exercises both sides of the threshold.
    assert any(n < K for _, n in exact) and any(n >= K for _, n in exact)

    # People see counts below k as `<k`, in the table artifact and in the markdown report.
    shown = [{"country": c, "hotmail_users": n if n >= K else f"<{K}"} for c, n in exact]
    keys = [new.key, "user-metrics-report"]
    artifacts = _artifacts(summary["flow_run_id"], keys)
    assert set(artifacts) == set(keys)
    table = artifacts[new.key]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert rows == shown
    assert table.description == f"Hotmail users per country, run {RUN_DATE}."
    markdown = artifacts["user-metrics-report"].data
    section = markdown.split("## Hotmail users per country\n", 1)[1]
    assert section.startswith("\n| country | hotmail_users |\n|:---|")
    hidden = next(c for c, n in exact if n < K)
    assert f"| {hidden} | <{K} |" in section
    # The product's own reports are still there, before it.
    assert markdown.index("## Gmail users aged 60 or over") < markdown.index(
        "## Hotmail users per country"
    )


def test_migrate_refuses_a_stored_report_without_its_table(registry, tmp_path: Path) -> None:
    reports.register(hotmail_report())
    with connect(tmp_path / "db.duckdb") as con:
        with pytest.raises(RuntimeError, match=r"'hotmail-by-country'.*new numbered migration"):
            migrate(con)
        con.execute(TABLE_SQL.read_text(encoding="utf-8"))
        migrate(con)


def test_an_unstored_report_is_computed_from_its_sql(registry, tmp_path: Path) -> None:
    new = reports.register(hotmail_report(stored=False, key="hotmail-now"))
    day = dt.date(2026, 1, 1)
    people = [("FR", "France", "hotmail.com")] * 3 + [
        ("CL", "Chile", "hotmail.com"),
        ("CL", "Chile", "gmail.com"),
    ]
    rows = [
        {
            "gender": "female",
            "age_group": "[30-40]",
            "country_code": code,
            "country": name,
            "email_domain": domain,
        }
        for code, name, domain in people
    ]
    with connect(tmp_path / "db.duckdb") as con:
        migrate(con)  # no table needed
        committed_batch(con, analytical_batch(rows, day), day, "run-1")
        tables = {row[0] for row in con.execute("show tables").fetchall()}
        assert new.sql not in tables
        found = report_rows(con, new.key, day)
    assert sorted(found.itertuples(index=False, name=None)) == [("Chile", 1), ("France", 3)]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"key": "germany-gmail-share"}, "registered already"),
        ({"key": "Hotmail_by_country"}, "lowercase letters"),
        ({"counts": ("users",)}, "not among its columns"),
        ({"columns": ("country", "users; drop table x")}, "not plain SQL identifiers"),
        ({"sql": "report_nowhere"}, "no SQL file"),
    ],
)
def test_register_refuses_a_bad_declaration(registry, changes: dict, message: str) -> None:
    before = reports.registered()
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        reports.register(hotmail_report(**changes))
    assert reports.registered() == before
