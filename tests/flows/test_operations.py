"""flows/operations.py without a server: automations.yaml as it is applied."""

from __future__ import annotations

import datetime as dt
from uuid import uuid4

import pytest
import yaml

from flows.operations import AUTOMATIONS_FILE, _automation


@pytest.fixture
def specs() -> list[dict]:
    return yaml.safe_load(AUTOMATIONS_FILE.read_text(encoding="utf-8"))["automations"]


def test_the_file_holds_the_failure_and_the_late_automation(specs) -> None:
    block = uuid4()
    failed, late = (_automation(spec, block) for spec in specs)
    assert failed.enabled and late.enabled
    assert failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert failed.trigger.posture == "Reactive"
    assert late.trigger.posture == "Proactive" and late.trigger.expect == {
        "prefect.flow-run.Completed"
    }
    assert late.trigger.within == dt.timedelta(hours=26)
    for automation in (failed, late):
        (action,) = automation.actions
        assert action.type == "send-notification" and action.block_document_id == block
    # The failure message names deployment, run, state, run date, cause and link.
    body = failed.actions[0].body
    for field in ("Deployment:", "Flow run:", "State:", "Run date:", "Failure:", "Open:"):
        assert field in body, field
    assert "flow_run|ui_url" in body


def test_without_a_webhook_the_automations_are_kept_but_off(specs) -> None:
    assert not any(_automation(spec, None).enabled for spec in specs)
