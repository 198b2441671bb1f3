"""The leak scan of tables (Arrow tables, Parquet files, DuckDB tables, artifact rows), by column.

Each column's distinct cells are hashed and looked up whole (e-mail kinds lower-cased); cells
with separators are also scanned as text, for a secret inside a longer value; and every cell is
matched against the two value-free patterns. String, dictionary, floating-point and date columns
are scanned (the last two as text); integer columns are counts and ids. Counts are cells per
kind, never values.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.common.sqlfiles import read_sql
from tasks.privacy.leak_index import (
    RE2_COMPOSITE,
    SECRET_KINDS,
    SecretIndex,
    as_strings,
    hash_strings,
)
from tasks.privacy.leak_text import PATTERNS, TextScanner

# Columns are scanned in chunks of this many rows, so a million-row column never sits in memory
# whole (with its distinct values, their lower-case copies and hashes). Hits count cells, so the
# chunks' counts simply add up.
SCAN_CHUNK_ROWS = 131_072

# A field's name and its counts per kind, in the order the fields were scanned.
FieldCounts = tuple[str, Counter[str]]


class TableScanner:
    """Counts a batch's raw values, by kind, in the columns of tables."""

    def __init__(self, index: SecretIndex, text: TextScanner) -> None:
        """Look whole cells up in `index`, and cells with separators up as `text`."""
        self._index = index
        self._text = text

    def table_counts(self, table: pa.Table) -> list[FieldCounts]:
        """Cells per kind in every string, date and float column of an Arrow table."""
        counts = []
        for name in table.column_names:
            column = table[name]
            if _scannable(column.type):
                chunks = (
                    column.slice(start, SCAN_CHUNK_ROWS)
                    for start in range(0, len(column), SCAN_CHUNK_ROWS)
                )
                counts.append((name, self._column(chunks)))
        return counts

    def parquet_counts(self, path: Path) -> tuple[list[FieldCounts], str]:
        """Cells per kind in a Parquet file's columns, and its key-value metadata as text."""
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        counts = []
        # One column and one chunk at a time: a million-row file never sits in memory whole.
        for name in schema.names:
            if _scannable(schema.field(name).type):
                batches = parquet.iter_batches(SCAN_CHUNK_ROWS, columns=[name])
                counts.append((name, self._column(b.column(0) for b in batches)))
        metadata = "\n".join(
            f"{key.decode(errors='replace')} {value.decode(errors='replace')}"
            for key, value in (schema.metadata or {}).items()
            if key != b"ARROW:schema"  # the serialized schema itself, already covered by columns
        )
        return counts, metadata

    def duckdb_counts(
        self,
        source: Path | str | duckdb.DuckDBPyConnection,
        tables: Sequence[str] | None,
        run_date: dt.date | None,
        prefix: str,
    ) -> Iterator[tuple[str, list[FieldCounts]]]:
        """`prefix:table` and its cells per kind, one DuckDB table after the other."""
        if isinstance(source, duckdb.DuckDBPyConnection):
            yield from self._connection_counts(source, tables, run_date, prefix)
        else:
            with duckdb.connect(str(source), read_only=True) as con:
                yield from self._connection_counts(con, tables, run_date, prefix)

    def _connection_counts(
        self,
        con: duckdb.DuckDBPyConnection,
        tables: Sequence[str] | None,
        run_date: dt.date | None,
        prefix: str,
    ) -> Iterator[tuple[str, list[FieldCounts]]]:
        existing = [row[0] for row in con.execute(read_sql("list_tables")).fetchall()]
        if tables is None:
            tables = existing
        elif unknown := sorted(set(tables) - set(existing)):
            raise ValueError(f"no such DuckDB tables: {unknown}")
        for table in tables:
            # Identifiers cannot be bound: names come from the catalog and are quoted; the date
            # is bound. Other dates' rows were scanned by their own runs.
            quoted = _quoted(table)
            schema = con.sql(f"select * from {quoted} limit 0").to_arrow_table().schema
            where, params = "", {}
            if run_date is not None and "run_date" in schema.names:
                where, params = " where run_date = $run_date", {"run_date": run_date}
            counts = []
            # One column and one chunk at a time, as for Parquet. A connection serves one open
            # result at a time, so each reader is drained (and closed) before the next query.
            for column in (f.name for f in schema if _scannable(f.type)):
                query = f"select {_quoted(column)} from {quoted}{where}"
                with con.sql(query, params=params).to_arrow_reader(SCAN_CHUNK_ROWS) as reader:
                    counts.append((column, self._column(batch.column(0) for batch in reader)))
            yield f"{prefix}:{table}", counts

    def _column(self, chunks: Iterable[pa.Array | pa.ChunkedArray]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for chunk in chunks:
            counts += self._column_counts(pc.dictionary_encode(as_strings(chunk)))
        return counts

    def _column_counts(self, encoded: pa.DictionaryArray) -> Counter[str]:
        """Cells per kind in one column: exact values, words inside cells, and the patterns."""
        dictionary = encoded.dictionary
        if len(dictionary) == 0:
            return Counter()
        indices = encoded.indices.drop_null().to_numpy(zero_copy_only=False)
        per_entry = np.bincount(indices, minlength=len(dictionary))
        found: dict[str, np.ndarray] = {}

        def mark(kind: str, entries: np.ndarray) -> None:
            found[kind] = found.get(kind, np.zeros(len(dictionary), bool)) | entries

        lowered = pc.utf8_lower(dictionary)
        for secrets, values in ((self._index.cells, dictionary), (self._index.lower, lowered)):
            kinds = secrets.lookup(hash_strings(values))
            for kind_id in np.unique(kinds[kinds >= 0]):
                mark(SECRET_KINDS[kind_id], kinds == kind_id)
        # Secrets inside longer cells: only cells with a separator can hold one as a proper part.
        composite = np.flatnonzero(
            pc.match_substring_regex(dictionary, RE2_COMPOSITE).to_numpy(zero_copy_only=False)
        )
        texts = dictionary.take(pa.array(composite, pa.int64())).to_pylist()
        for position, counts in zip(composite, self._text.counts(texts), strict=True):
            for kind in counts:
                entries = np.zeros(len(dictionary), bool)
                entries[position] = True
                mark(kind, entries)
        for kind, pattern in PATTERNS:
            matched = pc.match_substring_regex(dictionary, pattern.re2)
            mark(kind, matched.to_numpy(zero_copy_only=False))
        return Counter(
            {
                kind: int(per_entry[entries].sum())
                for kind, entries in found.items()
                if entries.any()
            }
        )


def rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Table-artifact or GX-result rows as a table of text columns, one per key."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    # Numbers in these rows are counts and figures of ours: as text they can equal a zipcode
    # by chance (a count of 26534), while a leaked value would arrive as a string.
    columns = {
        key: pa.array(
            [None if isinstance(v := row.get(key), int | float) else _as_text(v) for row in rows],
            pa.string(),
        )
        for key in keys
    }
    return pa.table(columns) if columns else pa.table({})


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _scannable(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_floating(kind)
        # Dates can be birthdays; timestamps are ours (started_at, ...) and their text can
        # equal a coordinate's by chance.
        or pa.types.is_date(kind)
    )


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)
