"""Leak scan: look for any raw value of the batch in everything the run wrote.

The scanner never holds the raw values, only 64-bit hashes of them (`tasks.privacy.leak_index`),
and scans tables column by column (`tasks.privacy.leak_tables`) and free text token by token
and by n-grams, plus two value-free patterns (`tasks.privacy.leak_text`). A hit names the
output, the field and the kind of value, with a count; never the value. What is looked for, and
what is left out on purpose, is described in `tasks.privacy.leak_index`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tasks.common.errors import PipelineError
from tasks.common.tasks import as_task
from tasks.privacy.leak_index import (
    MIN_CELL_LENGTH,
    MIN_TEXT_LENGTH,
    MIN_TEXT_NUMBER_LENGTH,
    NUMERIC_KINDS,
    SECRET_KINDS,
    SecretHashes,
    SecretIndex,
    hash_strings,
    kept_values,
    secret_hashes,
)
from tasks.privacy.leak_tables import SCAN_CHUNK_ROWS, FieldCounts, TableScanner, rows_table
from tasks.privacy.leak_text import PATTERN_EMAIL, PATTERN_PHONE, TextScanner

# Importers take the scan's parts from here; the modules beside this one are how it is built.
__all__ = [
    "MIN_CELL_LENGTH",
    "MIN_TEXT_LENGTH",
    "MIN_TEXT_NUMBER_LENGTH",
    "NUMERIC_KINDS",
    "PATTERN_EMAIL",
    "PATTERN_PHONE",
    "SCAN_CHUNK_ROWS",
    "SECRET_KINDS",
    "Hit",
    "LeakError",
    "LeakScanReport",
    "LeakScanner",
    "SecretHashes",
    "hash_strings",
    "scan_for_leaks",
    "scan_for_leaks_task",
    "secret_hashes",
]


@dataclass(frozen=True)
class Hit:
    """Raw values of one kind found in one field of one output (never the value itself)."""

    output: str
    field: str
    count: int
    kind: str = ""

    def label(self) -> str:
        """`output:field (kind)`, safe to log and store."""
        return (
            f"{self.output}:{self.field} ({self.kind})"
            if self.kind
            else f"{self.output}:{self.field}"
        )


@dataclass
class LeakScanReport:
    """What the scan looked at and what it found."""

    outputs_scanned: list[str] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing was found."""
        return not self.hits

    @property
    def hit_count(self) -> int:
        """Cells, lines or occurrences found, summed over hits."""
        return sum(hit.count for hit in self.hits)

    def hit_fields(self) -> list[str]:
        """Distinct `output:field (kind)` labels of the hits, sorted."""
        return sorted({hit.label() for hit in self.hits})

    def as_run_columns(self) -> dict[str, Any]:
        """The scan's figures as pipeline_runs columns."""
        return {
            "leak_outputs_scanned": len(self.outputs_scanned),
            "leak_hits": self.hit_count,
            "leak_hit_fields": ", ".join(self.hit_fields()) or None,
        }

    def raise_if_leaked(self) -> None:
        """Raise LeakError naming every output and field with a hit."""
        if self.hits:
            raise LeakError(self)


class LeakError(PipelineError):
    """Raw values were found in the run's outputs; the message names outputs and fields only."""

    def __init__(self, report: LeakScanReport) -> None:
        self.report = report
        super().__init__(
            f"leak scan: {report.hit_count} raw value(s) in {len(report.hit_fields())} field(s): "
            + ", ".join(report.hit_fields())
        )


class LeakScanner:
    """Finds a batch's raw values in outputs by their hashes; reports fields and kinds only."""

    def __init__(
        self,
        source: pa.Table | Iterable[SecretHashes],
        run_date: dt.date | None = None,
        kept: Iterable[str] = (),
    ) -> None:
        """Build from raw source columns (SOURCE_SCHEMA) or from per-range `SecretHashes`."""
        parts = [secret_hashes(source)] if isinstance(source, pa.Table) else list(source)
        self.report = LeakScanReport()
        self._index = SecretIndex.build(parts, kept_values(run_date, kept))
        self._text = TextScanner(self._index)
        self._tables = TableScanner(self._index, self._text)

    @property
    def secrets(self) -> int:
        """How many distinct values are searched for (cells and text)."""
        return len(self._index)

    def scan_table(self, name: str, table: pa.Table) -> list[Hit]:
        """Hits in every string, date and float column of an Arrow table (cells, not values)."""
        return self._record(name, self._tables.table_counts(table))

    def scan_text(self, name: str, text: str, field: str = "text") -> list[Hit]:
        """Hits in free text (a log, an artifact's markdown); counts are occurrences."""
        return self._record(name, [(field, self._text.text_counts(text))])

    def scan_lines(self, name: str, lines: Iterable[str], field: str = "message") -> list[Hit]:
        """Hits in log lines; counts are lines with a hit of that kind."""
        return self._record(name, [(field, self._text.line_counts(lines))])

    def scan_rows(self, name: str, rows: Sequence[Mapping[str, Any]]) -> list[Hit]:
        """Hits in table-artifact or GX-result rows (each value as text, per key)."""
        return self.scan_table(name, rows_table(rows))

    def scan_parquet(self, path: Path, name: str | None = None) -> list[Hit]:
        """Hits in a Parquet file's cells and in its key-value metadata."""
        path = Path(path)
        name = name or str(path)
        columns, metadata = self._tables.parquet_counts(path)
        hits = self._record(name, columns)
        return hits + self.scan_text(name, metadata, field="metadata")

    def scan_duckdb(
        self,
        source: Path | str | duckdb.DuckDBPyConnection,
        tables: Sequence[str] | None = None,
        run_date: dt.date | None = None,
        prefix: str = "duckdb",
    ) -> list[Hit]:
        """Hits in DuckDB tables (all of them by default); with run_date, only that date's rows."""
        hits = []
        for output, columns in self._tables.duckdb_counts(source, tables, run_date, prefix):
            hits += self._record(output, columns)
        return hits

    def _record(self, output: str, fields: Iterable[FieldCounts]) -> list[Hit]:
        """The fields' counts as hits, added to the report with the output."""
        hits = [
            Hit(output, name, n, kind)
            for name, counts in fields
            for kind, n in sorted(counts.items())
            if n
        ]
        if output not in self.report.outputs_scanned:
            self.report.outputs_scanned.append(output)
        self.report.hits.extend(hits)
        return hits


def scan_for_leaks(
    scanner: LeakScanner,
    files: dict[str, Path],
    con: duckdb.DuckDBPyConnection,
    run_date: dt.date,
    texts: dict[str, str],
    rows: dict[str, list[dict[str, Any]]],
    log_lines: list[str],
) -> LeakScanReport:
    """Look for any raw value of the batch in everything the run staged; names fields only."""
    for name, path in files.items():
        scanner.scan_parquet(path, name)
    # The run's own connection: its open transaction shows the staged rows.
    scanner.scan_duckdb(con, run_date=run_date)
    for name, text in texts.items():
        scanner.scan_text(name, text)
    for name, table_rows in rows.items():
        scanner.scan_rows(name, table_rows)
    scanner.scan_lines("run log", list(log_lines))
    return scanner.report


scan_for_leaks_task = as_task(scan_for_leaks)
