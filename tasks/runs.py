"""Run bookkeeping: the pipeline_runs row of a flow run, and the report of a failed run.

A failed run's report says what the date holds on disk, read back after the failure (which
run's lake file, DuckDB rows and extract), never what the code assumes it left.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from tasks.load import (
    DatabaseBusyError,
    finish_run,
    last_source_schema,
    migrate,
    open_db,
    run_columns,
    set_run_process,
    start_run,
)
from tasks.recovery import Finding, check, holding
from tasks.run_config import RunConfig


def record_start(
    cfg: RunConfig, run_id: str, lock_timeout: float
) -> tuple[str | None, list[Finding]]:
    """Migrate, repair what killed runs left, insert this run's `running` row.

    Returns the last committed source schema and what the check found.
    """
    with open_db(cfg.duckdb_path, lock_timeout) as con:
        migrate(con)
        findings = check(con, cfg.lake_dir)
        previous = last_source_schema(con)
        start_run(con, run_id, cfg.run_date, cfg.records)
        set_run_process(con, run_id)
    return previous, findings


def record_end(
    cfg: RunConfig, run_id: str, status: str, figures: dict[str, Any], lock_timeout: float
) -> None:
    """Set the run's final status and every figure that has a pipeline_runs column."""
    with open_db(cfg.duckdb_path, lock_timeout) as con:
        columns = run_columns(con)
        finish_run(con, run_id, status, **{k: v for k, v in figures.items() if k in columns})


def read_back(cfg: RunConfig, lock_timeout: float) -> dict[str, Any]:
    """What the run date holds now: each layer's run id (and row counts), read from disk."""
    reason = "none (no database)"
    if cfg.duckdb_path.exists():
        try:
            with open_db(cfg.duckdb_path, lock_timeout) as con:
                return holding(con, cfg.lake_dir, cfg.run_date)
        except DatabaseBusyError:
            reason = "not read: another run holds the database"
    return {**holding(None, cfg.lake_dir, cfg.run_date), "db": reason, "db_extract": reason}


def kept_columns(held: dict[str, Any]) -> dict[str, Any]:
    """What the date held after a failure, as pipeline_runs columns."""
    return {
        "kept_lake_run": held.get("lake"),
        "kept_db_run": held.get("db"),
        "kept_extract_run": held.get("extract"),
        "kept_quarantine": held.get("quarantine"),
    }


def _whose(text: str | None, run_id: str) -> str:
    if text is None:
        return "unknown"
    return text.replace(f"run {run_id}", f"run {run_id} (this run)")


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
            "(or `python -m flows.user_metrics --check`) rolls the staged files forward."
        )
    return (
        "This run's batch was committed before the failure: rerun the date to publish its reports."
    )


def failure_markdown(
    run_date: dt.date | None,
    run_id: str,
    stage: str,
    error: str,
    held: dict[str, Any],
    published: Sequence[str] = (),
    details: Sequence[str] = (),
) -> str:
    """The `run-failure` artifact: what failed, where, and what the date holds now."""
    lines = [
        "# Run failed",
        "",
        f"- **Run date:** {run_date or 'not resolved (bad input)'}",
        f"- **Flow run:** `{run_id}`",
        f"- **Stage:** `{stage}`",
        f"- **Error:** `{error}`",
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
            f"- Quarantined batch: {f'`{quarantine}`' if quarantine else 'none'}",
            f"- Artifacts this run published: {', '.join(published) or 'none'}",
            "",
            _verdict(held, run_id),
        ]
    if details:
        lines += ["", "## Details", "", *details]
    return "\n".join(lines) + "\n"
