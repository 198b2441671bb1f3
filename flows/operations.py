"""What `make serve` and the compose worker apply to a Prefect server, idempotently: the alert
automations (automations.yaml) with their webhook block, the shared request budget and the DuckDB
file's concurrency limit.

Everything goes through Prefect's client, so it works with PREFECT_API_AUTH_STRING set.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import yaml
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectNotFound

from tasks.common.settings import get_settings

PROJECT_DIR = Path(__file__).resolve().parents[1]
AUTOMATIONS_FILE = PROJECT_DIR / "automations.yaml"
WEBHOOK_ENV = "ALERT_WEBHOOK_URL"
# The name automations.yaml gives the notification block; it is saved under this name.
BLOCK_NAME = "alert-webhook"
# Slack incoming webhooks read `text`; a generic receiver gets subject and body apart as well.
WEBHOOK_JSON = {"text": "{{subject}}\n{{body}}", "subject": "{{subject}}", "body": "{{body}}"}


def apply_alerts(path: Path = AUTOMATIONS_FILE) -> str:
    """Create or update the webhook block and the automations; one line saying what was done."""
    secret = get_settings().alert_webhook_url
    url = secret.get_secret_value().strip() if secret is not None else ""
    specs = yaml.safe_load(path.read_text(encoding="utf-8"))["automations"]
    block_id = None
    if url:
        block = CustomWebhookNotificationBlock(name=BLOCK_NAME, url=url, json_data=WEBHOOK_JSON)
        block_id = block.save(BLOCK_NAME, overwrite=True)
    for spec in specs:
        _upsert(_automation(spec, block_id))
    if block_id is None:
        return f"Alerts             off: set {WEBHOOK_ENV} to a Slack or JSON webhook to get them"
    names = ", ".join(spec["name"] for spec in specs)
    return f"Alerts             on ({names}) to the webhook in {WEBHOOK_ENV}"


def _automation(spec: dict[str, Any], block_id: Any) -> AutomationCore:
    """An Automation from its automations.yaml entry; disabled when there is no webhook."""
    spec = copy.deepcopy(spec)
    for action in spec["actions"]:
        if action.pop("block", None) is not None:
            # A placeholder id when alerts are off: the automation is kept, but disabled.
            action["block_document_id"] = block_id or "00000000-0000-0000-0000-000000000000"
    spec["enabled"] = block_id is not None
    return AutomationCore.model_validate(spec)


def _upsert(automation: AutomationCore) -> None:
    """Update the automation of that name (the first, removing any others), or create it."""
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(automation.name)
        if not found:
            client.create_automation(automation)
            return
        first, *others = found
        client.update_automation(first.id, automation)
        for extra in others:
            client.delete_automation(extra.id)


def apply_rate_budget() -> str:
    """The global concurrency limit every fetch draws from: REQUESTS_PER_MINUTE, evenly spaced.

    One slot decaying at REQUESTS_PER_MINUTE / 60 a second lets one request through every
    60 / REQUESTS_PER_MINUTE seconds, across every process that uses the same server, so no
    60-second window holds more than REQUESTS_PER_MINUTE requests. 0 deactivates it.
    """
    settings = get_settings()
    name, rpm = settings.rate_limit_name, settings.requests_per_minute
    with get_client(sync_client=True) as api:
        if rpm > 0:
            api.upsert_global_concurrency_limit_by_name(name, 1, slot_decay_per_second=rpm / 60)
            api.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active=True))
            return f"Request budget     {rpm} a minute, shared: concurrency limit {name!r}"
        with contextlib.suppress(ObjectNotFound):  # never created: nothing to turn off
            api.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active=False))
    return "Request budget     none (REQUESTS_PER_MINUTE=0)"


def apply_duckdb_limit() -> str:
    """The global concurrency limit of one slot a process holds with the DuckDB file open.

    DuckDB allows one process per file: runs fetch side by side and take the file in turn, on
    any host that uses this server; the UI shows who holds it (Concurrency -> Global).
    """
    name = get_settings().duckdb_limit_name
    with get_client(sync_client=True) as api:
        api.upsert_global_concurrency_limit_by_name(name, 1)
        api.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active=True))
    return f"DuckDB file        one run at a time: concurrency limit {name!r}"


def main() -> int:
    """`python -m flows.operations`: apply each, a line each (PREFECT_API_URL names the server)."""
    print(apply_alerts())
    print(apply_rate_budget())
    print(apply_duckdb_limit())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
