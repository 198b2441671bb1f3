"""The latest report is the newest date's: a backfill of an older date, run from its deployment on
the session's real server, pool and worker, publishes under `<key>-<date>` and leaves the latest
versions of the plain keys as they were."""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb
import pytest

from tasks.reporting.artifacts import USER_METRICS_REPORT, run_artifact_keys
from tests.e2e.conftest import Service, trigger

pytestmark = pytest.mark.e2e

RECORDS = 200
# Dates no other test of the session loads (they load today and the days just before it).
NEWER = dt.date(2001, 2, 5)
OLDER = dt.date(2001, 1, 5)


def _latest(service: Service, keys: list[str]) -> dict[str, Any]:
    """Key -> the latest version of that key, as the UI's page of the key shows it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
    from prefect.settings import temporary_settings

    with temporary_settings(service.settings()), get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=keys))
        )
    return {str(collection.key): collection for collection in found}


def _run_dates(service: Service) -> dict[str, dt.date]:
    """Flow run id -> run date of every run whose batch is committed."""
    with duckdb.connect(str(service.duckdb_path), read_only=True) as con:
        rows = con.execute(
            "select flow_run_id, run_date from pipeline_runs where committed_at is not null"
        ).fetchall()
    return dict(rows)


def test_an_older_date_leaves_the_latest_report_keys_on_the_newest_date(service: Service) -> None:
    params = (f"records={RECORDS}", f'api_url="{service.api_url}"')
    newer = trigger(service, *params, f"run_date={NEWER}")
    assert newer.returncode == 0, newer.output
    # A newer date is committed now (this one, or today's of another test): the plain keys'
    # latest versions are that date's.
    before = _latest(service, list(run_artifact_keys()))
    assert set(before) == set(run_artifact_keys())

    older = trigger(
        service, *params, f"run_date={OLDER}", deployment="user-metrics-pipeline/backfill"
    )
    assert older.returncode == 0, older.output

    after = _latest(service, list(run_artifact_keys()))
    assert {k: a.latest_id for k, a in after.items()} == {
        k: a.latest_id for k, a in before.items()
    }, "the older date's run replaced a latest report"
    assert all(str(a.flow_run_id) != older.flow_run_id for a in after.values())
    committed = _run_dates(service)
    assert committed[older.flow_run_id] == OLDER
    newest = max(committed.values())
    report = after[USER_METRICS_REPORT]
    assert newest >= NEWER and committed[str(report.flow_run_id)] == newest
    assert f"# User metrics report, {newest}" in str(report.data)

    # Every artifact of the older date is under its dated key, created by its run.
    dated = {f"{key}-{OLDER}": key for key in run_artifact_keys()}
    published = _latest(service, list(dated))
    assert set(published) == set(dated)
    assert all(str(a.flow_run_id) == older.flow_run_id for a in published.values())
    old_report = published[f"{USER_METRICS_REPORT}-{OLDER}"]
    assert old_report.type == "markdown"
    assert f"# User metrics report, {OLDER}" in str(old_report.data)
