"""Validate the masked raw and the analytical batches with the Great Expectations suites in
`expectations/`, report counts only, and quarantine batches that fail.

Plain functions, no Prefect: the flow wraps them in tasks. GX is imported lazily (see
`tasks.gx_suites`), so importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from tasks import gx_suites
from tasks.gx_suites import EXPECTATIONS_DIR, SuiteLoadError, load_suite_file
from tasks.lake import quarantine_path, write_table
from tasks.schemas import MASK, MASKED_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ANALYTICAL_SUITE_PATH",
    "CODES_PER_COUNTRY",
    "MASKED_SUITE_PATH",
    "ExpectationOutcome",
    "SuiteLoadError",
    "ValidationError",
    "ValidationSummary",
    "ensure_valid",
    "load_suite_file",
    "quarantine",
    "validate_analytical",
    "validate_masked",
]

MASKED_SUITE_PATH = EXPECTATIONS_DIR / "masked_persons.json"
ANALYTICAL_SUITE_PATH = EXPECTATIONS_DIR / "analytical_persons.json"

# GX has no "each country has exactly one code" expectation. The validation frame (never stored)
# gets this derived column, the number of distinct country codes seen for the row's country in the
# batch, and both suites expect it to be between 1 and 1 and list it last among the columns.
CODES_PER_COUNTRY = "codes_per_country"

# BASIC still reports counts; exclude_unexpected_values drops the partial_unexpected_list that
# would otherwise carry the failing values (raw PII, if a mask was missed) into the results.
RESULT_FORMAT: dict[str, Any] = {"result_format": "BASIC", "exclude_unexpected_values": True}


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's outcome: what was checked and how many rows failed, never which values."""

    expectation: str
    column: str | None
    success: bool
    element_count: int | None = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    # True when GX raised instead of evaluating (e.g. the column is missing).
    raised_exception: bool = False

    def label(self) -> str:
        """The expectation type with its column, e.g. `expect_column_values_to_be_unique(email)`."""
        return f"{self.expectation}({self.column})" if self.column else self.expectation


@dataclass
class ValidationSummary:
    """Counts-only outcome of validating one batch against one suite."""

    suite: str
    success: bool
    evaluated: int
    failed: int
    rows: int
    results: list[ExpectationOutcome] = field(default_factory=list)

    def failures(self) -> list[ExpectationOutcome]:
        """The outcomes that did not succeed."""
        return [outcome for outcome in self.results if not outcome.success]

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per expectation, failures first, for a Prefect table artifact."""
        return [{"suite": self.suite, **asdict(outcome)} for outcome in self.results]

    def failures_text(self) -> str:
        """One line naming the failing expectations and columns (counts, never values)."""
        if self.success:
            return f"{self.suite}: all {self.evaluated} expectations passed on {self.rows} rows"
        parts = []
        for outcome in self.failures():
            if outcome.raised_exception:
                parts.append(f"{outcome.label()} [error]")
            elif outcome.unexpected_count is not None:
                parts.append(f"{outcome.label()} [{outcome.unexpected_count} rows]")
            else:
                parts.append(outcome.label())
        return (
            f"{self.suite}: {self.failed} of {self.evaluated} expectations failed on "
            f"{self.rows} rows: " + ", ".join(parts)
        )


class ValidationError(RuntimeError):
    """A batch failed its suite; carries the counts-only summary."""

    def __init__(self, summary: ValidationSummary) -> None:
        super().__init__(summary.failures_text())
        self.summary = summary


def ensure_valid(summary: ValidationSummary) -> ValidationSummary:
    """Return the summary if it succeeded, else raise ValidationError."""
    if not summary.success:
        raise ValidationError(summary)
    return summary


# String columns with few distinct values (masks, gender, countries, age groups, domains) go to
# GX as pandas categoricals: the same values at a byte per row instead of a string per row, which
# keeps a million-row validation within memory bounds. Unique keys stay plain strings.
_DICTIONARY_MAX_SHARE = 0.5


def _gx_friendly(table: pa.Table) -> pa.Table:
    """The table with GX's fast paths in mind; values are unchanged, only representations."""
    for index, field_ in enumerate(table.schema):
        column = table.column(index)
        if pa.types.is_integer(field_.type) and field_.type != pa.int64():
            # GX's pandas `between` is vectorized only for int64/float64 and otherwise calls
            # Python once per row (seconds per million rows). A null makes it float64: also fast.
            table = table.set_column(
                index, field_.with_type(pa.int64()), pc.cast(column, pa.int64())
            )
        elif pa.types.is_string(field_.type) and table.num_rows:
            encoded = column.dictionary_encode()
            distinct = max((len(chunk.dictionary) for chunk in encoded.chunks), default=0)
            if distinct <= _DICTIONARY_MAX_SHARE * table.num_rows:
                table = table.set_column(index, field_.with_type(encoded.type), encoded)
    return table


def _validation_frame(table: pa.Table) -> pd.DataFrame:
    """The table as pandas plus the derived codes_per_country column."""
    # Only the frame GX sees changes representation; the batch itself keeps its schema.
    # Dates as datetime64, not a Python date object per row.
    frame = _gx_friendly(table).to_pandas(date_as_object=False)
    if {"country", "country_code"} <= set(frame.columns):
        # nunique skips nulls; null countries or codes are caught by the not-null expectations.
        codes = frame.groupby("country", dropna=False)["country_code"].transform("nunique")
        frame[CODES_PER_COUNTRY] = codes.astype("int64")
    else:
        # The missing column already fails the column-list expectation; stay evaluable here.
        frame[CODES_PER_COUNTRY] = 1
    return frame


def _outcome(result: Any) -> ExpectationOutcome:
    """Copy the counts out of one GX ExpectationValidationResult (never its values)."""
    config = result.expectation_config
    column = config.kwargs.get("column")
    counts = result.result or {}
    info = result.exception_info or {}
    # GX nests exception info per metric when a metric raised, flat otherwise.
    raised = bool(info.get("raised_exception")) or any(
        isinstance(value, dict) and value.get("raised_exception") for value in info.values()
    )

    def _int(key: str) -> int | None:
        value = counts.get(key)
        return int(value) if value is not None else None

    percent = counts.get("unexpected_percent")
    return ExpectationOutcome(
        expectation=config.type,
        column=column if isinstance(column, str) else None,
        success=bool(result.success),
        element_count=_int("element_count"),
        unexpected_count=_int("unexpected_count"),
        unexpected_percent=float(percent) if percent is not None else None,
        raised_exception=raised,
    )


def _validate(
    table: pa.Table, suite_path: Path, asset_name: str, expected_rows: int
) -> ValidationSummary:
    """Validate `table` against the suite at `suite_path` on its own GX asset."""
    suite = gx_suites.suite(suite_path)
    frame = _validation_frame(table)
    with gx_suites.LOCK:
        batch = gx_suites.batch_definition(asset_name).get_batch(
            batch_parameters={"dataframe": frame}
        )
        result = batch.validate(
            suite,
            result_format=RESULT_FORMAT,
            expectation_parameters={"expected_rows": int(expected_rows)},
        )
    outcomes = sorted(
        (_outcome(item) for item in result.results),
        key=lambda o: (o.success, o.expectation, o.column or ""),
    )
    failed = sum(not outcome.success for outcome in outcomes)
    return ValidationSummary(
        suite=suite.name,
        success=bool(result.success) and failed == 0,
        evaluated=len(outcomes),
        failed=failed,
        rows=table.num_rows,
        results=outcomes,
    )


def validate_masked(table: pa.Table, expected_rows: int) -> ValidationSummary:
    """Validate a masked raw batch (RAW_SCHEMA) against its suite in expectations/."""
    return _validate(table, MASKED_SUITE_PATH, "masked_persons", expected_rows)


def validate_analytical(table: pa.Table, expected_rows: int) -> ValidationSummary:
    """Validate an analytical batch (ANALYTICAL_SCHEMA) against its suite in expectations/."""
    return _validate(table, ANALYTICAL_SUITE_PATH, "analytical_persons", expected_rows)


def _remask(table: pa.Table) -> pa.Table:
    """Force the masks again: a batch may be quarantined precisely because a mask was missed."""
    for name in MASKED_COLUMNS:
        if name in table.column_names:
            column = table[name]
            masked = pc.if_else(pc.is_null(column), column, pa.scalar(MASK, column.type))
            index = table.schema.get_field_index(name)
            table = table.set_column(index, table.schema.field(index), masked)
    if "email" in table.column_names:
        email = table["email"]
        # Keep only the domain after the last "@"; no "@" means nothing is safe to keep.
        kept = pc.replace_substring_regex(email, pattern="^.*@", replacement=f"{MASK}@")
        masked = pc.if_else(pc.match_substring(email, "@"), kept, pa.scalar(MASK, email.type))
        index = table.schema.get_field_index("email")
        table = table.set_column(index, table.schema.field(index), masked)
    return table


def quarantine(
    table: pa.Table, lake_dir: Path, run_date: date, name: str = "persons.parquet"
) -> Path:
    """Write a failing batch atomically to lake_dir/quarantine/YYYY/MM/DD/<name>, re-masked."""
    if not name or Path(name).name != name:
        raise ValueError(f"quarantine file name must be a plain file name, got {name!r}")
    # The shared atomic writer: a temp file beside the target, renamed into place.
    return write_table(_remask(table), quarantine_path(lake_dir, run_date, name))
