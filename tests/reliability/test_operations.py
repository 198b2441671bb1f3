"""Operations: what a failed run leaves for a person to read (artifact, log line, docs)."""

from __future__ import annotations

import datetime as dt
import logging

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

from flows.user_metrics import user_metrics_pipeline
from tests.reliability.conftest import ROOT, Site, db_query

RUN_DATE = dt.date(2026, 4, 10)
FAST = {"RETRY_MAX_ATTEMPTS": "3"}


def artifact(flow_run_id: str, key: str):
    """The artifact with `key` that one flow run created, or None."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}),
        )
    return found[0] if found else None


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_failed_run_publishes_a_failure_artifact_and_logs_one_line(start_api, site: Site) -> None:
    db = site.db
    site.set_env(**FAST)
    good = start_api()
    user_metrics_pipeline(api_url=good.base_url, records=200, page_size=100, run_date=RUN_DATE)
    down = start_api(down=True)
    # The hook logs through prefect.get_logger; a handler on that logger sees it whatever the
    # console handler's stream is (capture fixtures of earlier tests may have swapped it).
    hook_logger = logging.getLogger("prefect.flows.user_metrics")
    handler = _Lines()
    hook_logger.addHandler(handler)
    try:
        state = user_metrics_pipeline(
            api_url=down.base_url, records=200, page_size=100, run_date=RUN_DATE, return_state=True
        )
    finally:
        hook_logger.removeHandler(handler)
    assert state.is_failed()
    run_id = str(state.state_details.flow_run_id)
    found = artifact(run_id, "run-failure")
    assert found is not None, "no run-failure artifact"
    text = found.data
    assert "fetch" in text and "page " in text and "HTTP 503" in text, text
    # Read back from disk: the previous run's 200 rows are what the date holds.
    assert "Nothing of this run was committed" in text and "(200 rows)" in text, text
    hook_lines = [line for line in handler.lines if "run-failure" in line]
    assert len(hook_lines) == 1 and "\n" not in hook_lines[0], handler.lines
    (row,) = db_query(
        db, "select status, failed_stage, error from pipeline_runs where flow_run_id = ?", [run_id]
    )
    assert row[0] == "failed" and row[1] == "fetch" and row[2].startswith("FetchError: page ")


def test_additive_drift_is_reported_and_the_run_continues(start_api, site: Site) -> None:
    db = site.db
    good = start_api()
    user_metrics_pipeline(api_url=good.base_url, records=200, page_size=100, run_date=RUN_DATE)
    drifted = start_api(drift=("extra-field",))
    summary = user_metrics_pipeline(
        api_url=drifted.base_url, records=200, page_size=100, run_date=RUN_DATE
    )
    found = artifact(summary["flow_run_id"], "schema-drift")
    # The new field is counted, never named: a key name is the source's own text.
    assert found is not None and "1 unexpected field(s) of type string" in found.data
    assert "title" not in found.data
    (row,) = db_query(
        db,
        "select status, source_schema, schema_change from pipeline_runs where flow_run_id = ?",
        [summary["flow_run_id"]],
    )
    assert row[0] == "completed" and "unexpected:string=1" in row[1], row
    assert "1 unexpected field(s)" in row[2] and "title" not in row[1] + row[2], row


def test_readme_links_to_a_when_it_fails_section() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "\n## When it fails\n" in operations
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/operations.md#when-it-fails)" in readme
