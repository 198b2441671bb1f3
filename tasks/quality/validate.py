"""Validate the masked raw and the analytical batches with the Great Expectations suites in
`expectations/` and report counts only (a failing batch is kept by tasks/storage/quarantine.py).

Plain functions, no Prefect: the flow wraps them in tasks. A batch is validated by the validator
process when one runs (tasks/quality/validator.py), else here (tasks/quality/gx_validation.py);
GX is imported lazily either way, so importing this module stays cheap.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa

from tasks.common.errors import PipelineError
from tasks.common.tasks import as_task
from tasks.quality import validator
from tasks.quality.gx_validation import ValidationSummary, validate_here
from tasks.reporting.artifacts import VALIDATION_ARTIFACT_KEY, Artifact


class ValidationError(PipelineError):
    """A batch failed its suite; carries the counts-only summary."""

    def __init__(self, summary: ValidationSummary) -> None:
        super().__init__(summary.failures_text())
        self.summary = summary


def _validate(
    table: pa.Table, layer: str, expected_rows: int, gx_dir: Path | None
) -> ValidationSummary:
    """The validator process's summary, or this process's where it gives none."""
    summary = validator.validate(layer, table, expected_rows, gx_dir)
    return summary if summary is not None else validate_here(table, layer, expected_rows, gx_dir)


def validate_masked(
    table: pa.Table, expected_rows: int, gx_dir: Path | None = None
) -> ValidationSummary:
    """Validate a masked raw batch (RAW_SCHEMA) against its suite in expectations/ (with
    `gx_dir`, its counts-only results go to the Data Docs site there)."""
    return _validate(table, "masked", expected_rows, gx_dir)


validate_masked_task = as_task(validate_masked)


def validate_analytical(
    table: pa.Table, expected_rows: int, gx_dir: Path | None = None
) -> ValidationSummary:
    """Validate an analytical batch (ANALYTICAL_SCHEMA) against its suite in expectations/ (with
    `gx_dir`, its counts-only results go to the Data Docs site there)."""
    return _validate(table, "analytical", expected_rows, gx_dir)


validate_analytical_task = as_task(validate_analytical)


def validation_artifact(summaries: list[ValidationSummary], run_date: date) -> Artifact:
    """Every expectation's outcome as a table artifact (counts, never values), naming the Data
    Docs site the results were rendered into."""
    description = f"Great Expectations results for run date {run_date} (counts only)."
    docs = sorted({summary.data_docs for summary in summaries if summary.data_docs})
    if docs:
        description += " Data Docs (counts only): " + ", ".join(docs)
    return Artifact(
        VALIDATION_ARTIFACT_KEY,
        description,
        table=[row for summary in summaries for row in summary.to_rows()],
    )


def prewarm() -> None:
    """Start the validator process (tasks/quality/validator.py), unless one runs: GX's import and
    first validation (seconds of CPU) then happen on the other core while the run
    imports, sets up and fetches."""
    validator.start()
