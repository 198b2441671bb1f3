"""Run bookkeeping: the pipeline_runs row of a flow run, and what a failed run reports."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from tasks.lake import quarantine_path, raw_path
from tasks.load import (
    claim_run,
    date_rows,
    finish_run,
    last_source_schema,
    migrate,
    open_db,
    run_columns,
    start_run,
)
from tasks.run_config import RunConfig


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, short enough for a log line or a table cell."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def record_start(cfg: RunConfig, run_id: str, lock_timeout: float) -> str | None:
    """Apply migrations, insert the run's `running` row; return the last good source schema."""
    with open_db(cfg.duckdb_path, lock_timeout) as con:
        migrate(con)
        previous = last_source_schema(con)
        start_run(con, run_id, cfg.run_date, cfg.records)
        claim_run(con, run_id)
    return previous


def record_end(
    cfg: RunConfig, run_id: str, status: str, metrics: dict[str, Any], lock_timeout: float
) -> None:
    """Set the run's final status and every metric that has a pipeline_runs column."""
    with open_db(cfg.duckdb_path, lock_timeout) as con:
        columns = run_columns(con)
        finish_run(con, run_id, status, **{k: v for k, v in metrics.items() if k in columns})


def kept_outputs(cfg: RunConfig, lock_timeout: float) -> dict[str, Any]:
    """What is on disk for the run date after a failure: the previous batch stays as it was."""
    lake = raw_path(cfg.lake_dir, cfg.run_date)
    quarantined = quarantine_path(cfg.lake_dir, cfg.run_date)
    rows = None
    if Path(cfg.duckdb_path).exists():
        try:
            with open_db(cfg.duckdb_path, lock_timeout) as con:
                rows = date_rows(con, cfg.run_date)
        except Exception:  # the database may be what failed; the report must still go out
            rows = None
    return {
        "lake_file": str(lake) if lake.exists() else None,
        "duckdb_rows": rows,
        "quarantine_file": str(quarantined) if quarantined.exists() else None,
    }


def failure_markdown(run_date: dt.date | None, stage: str, error: str, kept: dict[str, Any]) -> str:
    """The `run-failure` artifact: what failed, where, and what was kept (never data values)."""
    lake = kept.get("lake_file")
    rows = kept.get("duckdb_rows")
    quarantine = kept.get("quarantine_file")
    return "\n".join(
        [
            "# Run failed",
            "",
            f"- **Run date:** {run_date or 'not resolved (bad input)'}",
            f"- **Stage:** `{stage}`",
            f"- **Error:** `{error}`",
            "",
            "## What was kept",
            "",
            f"- Raw lake file for the date: {f'`{lake}` (untouched)' if lake else 'none'}",
            "- DuckDB rows for the date: "
            + (f"{rows:,} (previous batch, untouched)" if rows is not None else "unknown / none"),
            f"- Quarantined batch: {f'`{quarantine}`' if quarantine else 'none'}",
            "",
            "Nothing of this run was loaded. Fix the cause and rerun the date: a rerun replaces "
            "the date's batch in one transaction.",
        ]
    )
