"""The `run-failure` artifact: what failed, where, and what the date holds now (read back)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from tasks.reporting.artifacts import ui_text


def _whose(text: str | None, run_id: str) -> str:
    if text is None:
        return "unknown"
    return ui_text(text.replace(f"run {run_id}", f"run {run_id} (this run)"))


def _verdict(held: dict[str, Any], run_id: str) -> str:
    layers = [str(held.get(name)) for name in ("lake", "db", "extract", "db_extract")]
    ours = sum(f"run {run_id}" in layer for layer in layers)
    if ours == 0:
        return (
            "Nothing of this run was committed. Fix the cause and rerun the date: a rerun "
            "replaces the date's batch in one commit."
        )
    if ours < len(layers):
        return (
            "This run committed its DuckDB rows but not every lake file: the next run's check "
            "(or `python -m flows.cli --check`) rolls the staged files forward."
        )
    return (
        "This run's batch was committed before the failure: rerun the date to publish its reports."
    )


def failure_markdown(
    run_date: dt.date | None,
    run_id: str,
    step: str,
    error: str,
    held: dict[str, Any],
    published: Sequence[str] = (),
    details: Sequence[str] = (),
) -> str:
    """The `run-failure` artifact: what failed, where, and what the date holds now.

    Every text but our own goes through `ui_text`: an error names fields, pages and URLs, and
    `details` may arrive as list items (`- ...`), which stay list items.
    """
    lines = [
        "# Run failed",
        "",
        f"- **Run date:** {ui_text(run_date or 'not resolved (bad input)')}",
        f"- **Flow run:** {ui_text(run_id)}",
        f"- **Step:** {ui_text(step)}",
        f"- **Error:** {ui_text(error)}",
    ]
    if held:
        quarantine = held.get("quarantine")
        lines += [
            "",
            "## What the date holds now (read back after the failure)",
            "",
            f"- Raw lake file: {_whose(held.get('lake'), run_id)}",
            f"- DuckDB rows (persons_anonymized): {_whose(held.get('db'), run_id)}",
            f"- Shareable extract file: {_whose(held.get('extract'), run_id)}",
            f"- Extract rows (persons_shareable): {_whose(held.get('db_extract'), run_id)}",
            f"- Quarantined batch: {ui_text(quarantine) if quarantine else 'none'}",
            f"- Artifacts this run published: {ui_text(', '.join(published) or 'none')}",
            "",
            _verdict(held, run_id),
        ]
    if details:
        lines += ["", "## Details", "", *(f"- {ui_text(d.removeprefix('- '))}" for d in details)]
    return "\n".join(lines) + "\n"
