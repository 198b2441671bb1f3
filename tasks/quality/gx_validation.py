"""Validate a batch with Great Expectations in this process: the frame GX sees, a checkpoint run
(tasks.quality.gx_suites), counts copied out.

Both the run's process (tasks/quality/validate.py) and the validator process
(tasks/quality/validator.py) validate through `validate_here`. GX itself is imported lazily (see
`tasks.quality.gx_suites`), and nothing here imports Prefect, so the validator process pays for
GX and pandas only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.schemas import AGE_GROUPS, ANALYTICAL_SCHEMA, MASK, MASKED_COLUMNS, RAW_SCHEMA
from tasks.quality import gx_suites
from tasks.quality.gx_suites import EXPECTATIONS_DIR

if TYPE_CHECKING:
    import pandas as pd

MASKED_SUITE_PATH = EXPECTATIONS_DIR / "masked_persons.json"
ANALYTICAL_SUITE_PATH = EXPECTATIONS_DIR / "analytical_persons.json"
# Each layer's suite file and the GX asset it is validated on.
LAYERS = {
    "masked": (MASKED_SUITE_PATH, "masked_persons"),
    "analytical": (ANALYTICAL_SUITE_PATH, "analytical_persons"),
}

# GX has no "each country has exactly one code" expectation. The validation frame (never stored)
# gets this derived column, the number of distinct country codes seen for the row's country in the
# batch, and both suites expect it to be between 1 and 1 and list it last among the columns.
CODES_PER_COUNTRY = "codes_per_country"


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
    # The Data Docs index page the validation was rendered into (None: none was written).
    data_docs: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-able values (how the validator process sends it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationSummary:
        """The summary `to_dict` gave."""
        results = [ExpectationOutcome(**outcome) for outcome in data["results"]]
        return cls(**{**data, "results": results})

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


# String columns with few distinct values (masks, gender, countries, age groups, domains) go to
# GX as pandas categoricals: the same values at a byte or two per row instead of a string per
# row, which keeps a million-row validation within memory bounds. Unique keys stay plain strings.
_DICTIONARY_MAX_SHARE = 0.5
# Rows looked at first: a column already mostly distinct there (the person keys) is not worth
# dictionary-encoding whole, which for a million unique keys costs time and a transient copy.
_DISTINCT_SAMPLE_ROWS = 8192


def _regex_columns(suite: Any) -> frozenset[str]:
    """Columns a regex expectation of the suite reads.

    GX's pandas regex metrics start with `column.astype(str)`, which turns a categorical back into
    one string per row (time and a transient copy); a plain Arrow-backed string column passes
    through as it is and is matched by pyarrow.
    """
    return frozenset(
        column
        for expectation in suite.expectations
        if "regex" in expectation.expectation_type
        and isinstance(column := getattr(expectation, "column", None), str)
    )


def _mostly_repeated(column: pa.ChunkedArray) -> bool:
    """Whether the first rows of a string column repeat enough to be worth a dictionary."""
    sample = column.slice(0, _DISTINCT_SAMPLE_ROWS)
    distinct = pc.count_distinct(sample, mode="all").as_py()
    return bool(distinct <= _DICTIONARY_MAX_SHARE * len(sample))


def _gx_column(column: pa.ChunkedArray, plain: bool) -> pa.ChunkedArray:
    """The column with GX's fast paths in mind; values are unchanged, only representations."""
    type_ = column.type
    if pa.types.is_integer(type_) and type_ != pa.int64():
        # GX's pandas `between` is vectorized only for int64/float64 and otherwise calls
        # Python once per row (seconds per million rows). A null makes it float64: also fast.
        return pc.cast(column, pa.int64())
    if pa.types.is_string(type_) and len(column) and not plain and _mostly_repeated(column):
        encoded = column.dictionary_encode()
        # Arrow gives every chunk the column's whole dictionary.
        distinct = max((len(chunk.dictionary) for chunk in encoded.chunks), default=0)
        if distinct <= _DICTIONARY_MAX_SHARE * len(column):
            return encoded
    return column


def _validation_frame(table: pa.Table, plain: Collection[str] = ()) -> pd.DataFrame:
    """The table as pandas plus the derived codes_per_country column.

    Columns named in `plain` stay plain strings (see `_regex_columns`). Only the frame GX sees
    changes representation; the batch itself keeps its schema. Converting one column at a time
    keeps only one column's intermediate arrays alive at once.
    """
    import pandas as pd

    names = table.column_names
    series = [
        # Dates as datetime64, not a Python date object per row.
        _gx_column(table.column(index), name in plain).to_pandas(date_as_object=False)
        for index, name in enumerate(names)
    ]
    # Positional keys, then the names: a batch may repeat a column name (the column-list
    # expectation reports that), which a dict keyed by name would silently collapse.
    frame = pd.DataFrame(dict(enumerate(series)), index=pd.RangeIndex(table.num_rows), copy=False)
    frame.columns = pd.Index(names)
    del series
    if {"country", "country_code"} <= set(names):
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


def _run_name(table: pa.Table) -> str | None:
    """The run name Data Docs files the validation under: the batch's run date (set by the
    pipeline, not the source), or None (GX's `__none__`) where the batch has no single one."""
    if "run_date" not in table.column_names:
        return None
    dates = pc.unique(table["run_date"]).drop_null()
    return gx_suites.run_name(dates[0].as_py()) if len(dates) == 1 else None


def validate_here(
    table: pa.Table, layer: str, expected_rows: int, gx_dir: Path | None = None
) -> ValidationSummary:
    """Validate `table` against the suite of `layer` ("masked", "analytical"), in this process;
    with `gx_dir`, the results (counts only) are stored and rendered into its Data Docs site."""
    suite_path, asset_name = LAYERS[layer]
    suite = gx_suites.suite(suite_path)
    frame = _validation_frame(table, _regex_columns(suite))
    from great_expectations.core.run_identifier import RunIdentifier

    with gx_suites.LOCK:
        context, checkpoint = gx_suites.checkpoint(suite_path, asset_name, gx_dir)
        try:
            run = checkpoint.run(
                batch_parameters={"dataframe": frame},
                expectation_parameters={"expected_rows": int(expected_rows)},
                run_id=RunIdentifier(run_name=_run_name(table)),
            )
        finally:
            gx_suites.release(context)
    del frame
    (result,) = run.run_results.values()
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
        data_docs=str(gx_suites.data_docs_index(gx_dir)) if gx_dir is not None else None,
    )


# Enough rows for the repeated columns to become categoricals, as in a real batch.
_WARM_UP_ROWS = 64


def warm_up_batches(rows: int = _WARM_UP_ROWS) -> tuple[pa.Table, pa.Table]:
    """A small valid masked batch and its analytical counterpart (made-up, PII-free values)."""
    today = date.today()
    shared = {
        "person_key": [f"{i:064x}" for i in range(rows)],
        "run_date": [today] * rows,
        "gender": ["female", "male"] * (rows // 2) + ["female"] * (rows % 2),
        "country": ["Germany"] * rows,
        "country_code": ["DE"] * rows,
    }
    raw = {
        **shared,
        **dict.fromkeys(MASKED_COLUMNS, [MASK] * rows),
        "email": [f"{MASK}@example.com"] * rows,
        "age": [35] * rows,
    }
    analytical = {
        **shared,
        "age_group": [AGE_GROUPS[3]] * rows,
        "email_domain": ["example.com"] * rows,
    }
    return (
        pa.table({name: raw[name] for name in RAW_SCHEMA.names}, schema=RAW_SCHEMA),
        pa.table(
            {name: analytical[name] for name in ANALYTICAL_SCHEMA.names}, schema=ANALYTICAL_SCHEMA
        ),
    )


def warm_up() -> None:
    """Pay GX's one-time costs now: import, suites, a first checkpoint run and Data Docs render.

    After GX's import, the first validation in a process still costs more than later ones (GX
    and pandas set up metric and string code paths on first use, the renderer its templates).
    This runs both suites once on a small made-up batch, into a Data Docs site in a temporary
    folder that is then removed, so a run can do all of it ahead of time (the validator process
    does it as it starts).
    A suite file GX cannot fully load raises SuiteLoadError here, as it would in validation.
    """
    masked, analytical = warm_up_batches()
    with tempfile.TemporaryDirectory(prefix="gx-warm-up-") as scratch:
        validate_here(masked, "masked", masked.num_rows, Path(scratch))
        validate_here(analytical, "analytical", analytical.num_rows, Path(scratch))
