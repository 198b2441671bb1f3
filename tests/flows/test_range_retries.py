"""Retries where they belong: a page range that fails for a cause that can clear is fetched again
by its own task's retries, never the whole run; a failure no retry can fix is not retried, nor is
a range whose retry would come after the run's deadline. Real flow, real local API."""

from __future__ import annotations

import datetime as dt

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import Failed

from flows.cli import main
from flows.user_metrics import user_metrics_pipeline
from tasks.common.errors import PipelineError
from tasks.common.run_config import FetchConfig
from tasks.ingest import range_retry_options
from tasks.ingest.fetch import FetchError, close_clients

RUN_DATE = dt.date(2026, 11, 21)


@pytest.fixture(autouse=True)
def _fresh_clients():
    yield
    close_clients()


@pytest.fixture
def settings_env(pipeline_env, monkeypatch):
    """Set more settings for the run (pipeline_env's, plus these)."""
    from tasks.common.settings import get_settings

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    return set_env


def _fetch_task_runs(flow_run_id: str) -> list:
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return [t for t in tasks if t.name.startswith("fetch and mask")]


def test_a_failed_range_is_fetched_again_alone(
    start_api, pipeline_env, prefect_storage, settings_env
):
    # Every page's first two requests fail and a page has two attempts: each range fails once,
    # then its retry (the same pages, asked a third time) succeeds.
    settings_env(RETRY_MAX_ATTEMPTS="2", FETCH_RANGE_RETRIES="1")
    server = start_api(fail_first=2)
    summary = user_metrics_pipeline(
        api_url=server.base_url, records=300, page_size=100, run_date=RUN_DATE
    )
    assert summary["records_loaded"] == 300
    fetches = _fetch_task_runs(summary["flow_run_id"])
    assert sorted(t.run_count for t in fetches) == [2, 2, 2], fetches
    assert all(t.state_type.value == "COMPLETED" for t in fetches)
    # 3 pages x (2 failed attempts + 1 in the retry): no page outside a failed range was asked.
    assert server.stats()["total"] == 9, server.stats()


def test_a_failure_no_retry_can_fix_is_not_retried(
    api, pipeline_env, prefect_storage, settings_env, capsys
):
    settings_env(FETCH_RANGE_RETRIES="2")
    wrong = api.base_url.replace("/api/v2", "/api/v9")
    code = main(["--api-url", wrong, "--records", "10", "--run-date", RUN_DATE.isoformat()])
    assert code == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert api.stats()["total"] == 1


def test_no_range_retry_past_the_runs_deadline(
    start_api, pipeline_env, prefect_storage, settings_env, capsys
):
    # The retry would start after the deadline: the run fails at once with the page's cause.
    settings_env(
        RETRY_MAX_ATTEMPTS="2", FETCH_RANGE_RETRIES="2", FETCH_RANGE_RETRY_DELAY_SECONDS="600"
    )
    server = start_api(down=True)
    args = ["--api-url", server.base_url, "--records", "10", "--run-date", RUN_DATE.isoformat()]
    code = main([*args, "--deadline-seconds", "300"])
    assert code == 1
    err = capsys.readouterr().err
    assert "page 0 failed after 2 attempts; last cause: HTTP 503" in err, err
    assert server.stats()["total"] == 2, server.stats()


def _condition(config: FetchConfig, exc: Exception) -> bool:
    return bool(range_retry_options(config)["retry_condition_fn"](None, None, Failed(data=exc)))


def test_the_retry_condition():
    transient = FetchError("page 3 failed after 6 attempts; last cause: HTTP 503", transient=True)
    config = FetchConfig(api_url="http://127.0.0.1:9/api/v2", range_retries=2)
    assert range_retry_options(config)["retries"] == 2
    assert _condition(config, transient)
    assert not _condition(config, PipelineError("pages 0-2: values outside their vocabulary"))
    assert not _condition(config, ValueError("a bug"))
    soon = FetchConfig(api_url=config.api_url, range_retry_delay=60, run_deadline=1.0)
    assert not _condition(soon, transient)
