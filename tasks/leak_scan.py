"""Leak scan: look for any raw value of the batch in everything the run wrote.

A `LeakScanner` is built from the batch's raw source columns while they are still in memory and
keeps the identifying values as sets of strings (never written, logged or returned). It scans
tables cell by cell and free text (log lines, artifact markdown) token by token, plus two patterns
that need no batch: an e-mail address with a real local part and an E.164 phone number.
A hit names the output, the field and the kind of value, with a count; never the value.

What is looked for, and what is left out on purpose (each exclusion avoids a false alarm that
would fail a clean run):

- kinds: full emails and email local parts (compared in lower case, as mail systems do), first
  and last names, phones (as served and digits only), streets, street names, building numbers,
  cities, zipcodes, birthdays, latitude and longitude (as text, shortest round-trip form) and
  websites. Matching is case-sensitive except for e-mail values.
- values that legitimately remain in the outputs are never secrets: country names and codes,
  genders, email domains, the run date, `****`, age groups, region names, `other`, `*`, and
  any value the caller adds. A secret that is also a word sequence inside a kept value (surname
  "Marshall", country "Marshall Islands") is not searched in free text.
- whole cells: values of 4 or more characters (`MIN_CELL_LENGTH`).
- free text: names, streets, cities, emails and websites need 5 or more characters
  (`MIN_TEXT_LENGTH`), the numeric kinds (zipcodes, building numbers, birthdays, phones,
  coordinates: `NUMERIC_KINDS`) 8 or more (`MIN_TEXT_NUMBER_LENGTH`): counts and timings
  in log lines are numbers too, and a 5-digit zipcode equal to "30000 records" is a
  coincidence, not a leak. A standalone local part (not followed by "@") is only searched in
  text when it holds a digit, `.` or `_`, or is 7+ characters long, so the word "along" does not
  match a local part a+Long.
- base64 `data:` URIs (the embedded chart PNGs) are cut from text before scanning: they are
  pixels, and random base64 could look like a phone number.
- tables: string, dictionary, floating-point and date columns (the last two as text); integer
  columns are counts and ids.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.regions import CONTINENTS, SUB_REGIONS, UNKNOWN
from tasks.schemas import AGE_GROUPS, MASK
from tasks.sqlfiles import read_sql

MIN_CELL_LENGTH = 4
MIN_TEXT_LENGTH = 5
MIN_TEXT_NUMBER_LENGTH = 8
_MAX_NGRAM = 8

# Source column -> kind of secret, in priority order (a value in two kinds is reported as the
# first). email_local and phone_digits are derived from email and phone.
SECRET_KINDS: tuple[str, ...] = (
    "email",
    "email_local",
    "phone",
    "phone_digits",
    "firstname",
    "lastname",
    "birthday",
    "street",
    "street_name",
    "building_number",
    "city",
    "zipcode",
    "latitude",
    "longitude",
    "website",
)
_LOWER_KINDS = frozenset({"email", "email_local"})
# Kinds made of digits and punctuation: they need MIN_TEXT_NUMBER_LENGTH in free text.
NUMERIC_KINDS = frozenset(
    {"phone", "phone_digits", "birthday", "building_number", "zipcode", "latitude", "longitude"}
)
PATTERN_EMAIL = "pattern:email"
PATTERN_PHONE = "pattern:e164_phone"

# Values of these shapes are leaks whoever they belong to. The local part's class has no `*`,
# so the masked `****@domain` never matches. RE2 (Arrow) has no look-behind: a leading
# alternative keeps the phone pattern from matching inside base64 or longer tokens.
_EMAIL_RE2 = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
_PHONE_RE2 = r"(^|[^A-Za-z0-9+/=])\+[0-9]{8,15}($|[^0-9])"
_EMAIL_TEXT = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_PHONE_TEXT = re.compile(r"(?<![A-Za-z0-9+/=])\+[0-9]{8,15}(?![0-9])")
_DATA_URI = re.compile(r"data:[\w/+.\-]+;base64,[A-Za-z0-9+/=\s]*")

# Tokens: letters, digits and the characters inside emails, phones, dates, coordinates and
# names (O'Neil, Mary-Jane); edge punctuation is stripped so "Brown." matches "Brown", and so
# are edge underscores, which markdown uses for emphasis ("_Brown._").
_TOKEN = re.compile(r"[\w@+.'’\-]+")
_EDGE = ".'’-_"
# The same normalization in RE2, to prepare 400k secret strings without a Python loop.
_RE2_SEPARATORS = r"[^\pL\pN_@+.'’\-]+"
_RE2_LEADING = r"(^|\s)[.'’\-_]+"
_RE2_TRAILING = r"[.'’\-_]+(\s|$)"
# A cell that could hold a secret as a proper part: it has a separator or edge punctuation.
_RE2_COMPOSITE = r"[^\pL\pN_@+.'’\-]|^[.'’\-_]|[.'’\-_]$"


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


class LeakError(RuntimeError):
    """Raw values were found in the run's outputs; the message names outputs and fields only."""

    def __init__(self, report: LeakScanReport) -> None:
        self.report = report
        super().__init__(
            f"leak scan: {report.hit_count} raw value(s) in {len(report.hit_fields())} field(s): "
            + ", ".join(report.hit_fields())
        )


def _strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    return values


def _normalized(values: pa.Array) -> pa.Array:
    """Vectorized version of `_tokens` joined by spaces (the form text n-grams are compared in)."""
    out = pc.replace_substring_regex(values, _RE2_SEPARATORS, " ")
    out = pc.replace_substring_regex(out, _RE2_LEADING, r"\1")
    out = pc.replace_substring_regex(out, _RE2_TRAILING, r"\1")
    return pc.utf8_trim_whitespace(out)


def _first_kind(parts: list[tuple[pa.Array, int]]) -> tuple[pa.Array, np.ndarray]:
    """Distinct values of (values, kind id) parts, each with the kind of its first part."""
    if not parts:
        return pa.array([], pa.string()), np.empty(0, np.int64)
    values = pa.concat_arrays([p for p, _ in parts]).cast(pa.string())
    kinds = np.concatenate([np.full(len(p), kind, np.int64) for p, kind in parts])
    encoded = pc.dictionary_encode(values)
    _, first = np.unique(encoded.indices.to_numpy(zero_copy_only=False), return_index=True)
    return encoded.dictionary, kinds[first]


def _tokens(text: str) -> list[str]:
    return [t for t in (raw.strip(_EDGE) for raw in _TOKEN.findall(text)) if t]


def _ngrams(values: Iterable[str]) -> set[str]:
    grams: set[str] = set()
    for value in values:
        tokens = _tokens(value)
        for n in range(1, len(tokens) + 1):
            grams.update(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


class LeakScanner:
    """Holds a batch's raw values in memory and finds them in outputs; reports fields only."""

    def __init__(
        self, source: pa.Table, run_date: dt.date | None = None, kept: Iterable[str] = ()
    ) -> None:
        """Build from the raw source columns (tasks.source_schema.SOURCE_SCHEMA)."""
        self.report = LeakScanReport()
        kept_values = self._kept_values(source, run_date, kept)
        kept_array = pa.array(sorted(kept_values), pa.string())
        kept_lower = pc.unique(pc.utf8_lower(kept_array))
        kept_grams = pa.array(sorted(_ngrams(kept_values)), pa.string())

        self._kinds = list(SECRET_KINDS)
        cells: list[tuple[pa.Array, int]] = []
        lowered: list[tuple[pa.Array, int]] = []
        text: list[tuple[pa.Array, int]] = []
        for kind, values in self._secret_columns(source).items():
            kind_id = self._kinds.index(kind)
            values = pc.unique(_strings(values)).drop_null()
            # Lower-cased kinds (emails) are compared with lower-cased cells, so a local part
            # such as "jordan" must not stand for the kept country "Jordan".
            kept_set = kept_lower if kind in _LOWER_KINDS else kept_array
            values = pc.filter(values, pc.invert(pc.is_in(values, value_set=kept_set)))
            long_enough = pc.greater_equal(pc.utf8_length(values), MIN_CELL_LENGTH)
            target = lowered if kind in _LOWER_KINDS else cells
            target.append((pc.filter(values, long_enough), kind_id))
            text.append((self._text_values(kind, values, kept_grams), kind_id))
        self._cell_values, self._cell_kinds = _first_kind(cells)
        self._lower_values, self._lower_kinds = _first_kind(lowered)
        self._text_values_array, self._text_kinds = _first_kind(text)
        self._text_index: dict[str, str] | None = None

    def _text_lookup(self) -> dict[str, str]:
        # Built on first use: a dict of ~200k strings is only needed once text is scanned.
        if self._text_index is None:
            kinds = [self._kinds[i] for i in self._text_kinds.tolist()]
            self._text_index = dict(zip(self._text_values_array.to_pylist(), kinds, strict=True))
            self._text_lower = {v: k for v, k in self._text_index.items() if k in _LOWER_KINDS}
            multi = [v.split(" ") for v in self._text_index if " " in v]
            self._first_tokens = {tokens[0] for tokens in multi}
            self._max_ngram = min(max((len(t) for t in multi), default=1), _MAX_NGRAM)
        return self._text_index

    @classmethod
    def from_records(
        cls, records: Sequence[Mapping[str, Any]], run_date: dt.date | None = None, **kwargs: Any
    ) -> LeakScanner:
        """Build from raw records as the API served them (nested `address`)."""
        from tasks.source_schema import to_source_table

        table, _ = to_source_table(list(records), 0)
        return cls(table, run_date, **kwargs)

    @property
    def secrets(self) -> int:
        """How many distinct values are searched for (cells and text)."""
        return len(self._cell_values) + len(self._lower_values) + len(self._text_values_array)

    # --- building ---------------------------------------------------------------------------------

    @staticmethod
    def _kept_values(source: pa.Table, run_date: dt.date | None, kept: Iterable[str]) -> set[str]:
        values = {MASK, "*", "other", UNKNOWN, *AGE_GROUPS, *CONTINENTS, *SUB_REGIONS, *kept}
        for name in ("country", "country_code", "gender"):
            if name in source.column_names:
                values.update(v for v in pc.unique(_strings(source[name])).to_pylist() if v)
        if "email" in source.column_names:
            domains = pc.extract_regex(_strings(source["email"]), r"@(?P<d>[^@]*)$").field("d")
            for domain in pc.unique(domains).to_pylist():
                if domain:
                    values.update({domain, domain.lower()})
        if run_date is not None:
            values.add(run_date.isoformat())
        return values

    @staticmethod
    def _secret_columns(source: pa.Table) -> dict[str, pa.Array | pa.ChunkedArray]:
        columns: dict[str, pa.Array | pa.ChunkedArray] = {}
        names = set(source.column_names)
        for kind in SECRET_KINDS:
            if kind == "email_local" and "email" in names:
                email = pc.utf8_lower(_strings(source["email"]))
                columns["email"] = email
                local = pc.extract_regex(email, r"^(?P<l>.*)@[^@]*$").field("l")
                columns[kind] = pc.if_else(pc.equal(local, ""), None, local)
            elif kind == "phone_digits" and "phone" in names:
                columns[kind] = pc.replace_substring_regex(_strings(source["phone"]), r"\D", "")
            elif kind in names and kind != "email":
                columns[kind] = source[kind]
        return {kind: columns[kind] for kind in SECRET_KINDS if kind in columns}

    @staticmethod
    def _text_values(kind: str, values: pa.Array, kept_grams: pa.Array) -> pa.Array:
        # Only values with separators or edge punctuation need the (regex) normalization.
        composite = pc.match_substring_regex(values, _RE2_COMPOSITE)
        norm = pa.concat_arrays(
            [
                pc.filter(values, pc.invert(composite)),
                _normalized(pc.filter(values, composite)),
            ]
        )
        length = pc.utf8_length(norm)
        minimum = MIN_TEXT_NUMBER_LENGTH if kind in NUMERIC_KINDS else MIN_TEXT_LENGTH
        ok = pc.greater_equal(length, minimum)
        if kind == "email_local":
            distinctive = pc.or_(
                pc.match_substring_regex(norm, r"[0-9._]"), pc.greater_equal(length, 7)
            )
            ok = pc.and_(ok, distinctive)
        ok = pc.and_(ok, pc.invert(pc.is_in(norm, value_set=kept_grams)))
        return pc.unique(pc.filter(norm, ok))

    # --- scanning ---------------------------------------------------------------------------------

    def _record(self, output: str, hits: list[Hit]) -> list[Hit]:
        if output not in self.report.outputs_scanned:
            self.report.outputs_scanned.append(output)
        self.report.hits.extend(hits)
        return hits

    def _present(self, entries: pa.Array) -> list[tuple[pa.Array, np.ndarray, bool]]:
        """The secrets among a table's distinct cells: (values, kind ids, compare lower-cased)."""
        # Hash the table's distinct cells (the small side) and probe every secret once, instead
        # of hashing ~200k secrets again for every column.
        present = []
        for values, kinds, lower in (
            (self._cell_values, self._cell_kinds, False),
            (self._lower_values, self._lower_kinds, True),
        ):
            probe = pc.unique(pc.utf8_lower(entries)) if lower else entries
            found = pc.is_in(values, value_set=probe).to_numpy(zero_copy_only=False)
            if found.any():
                present.append((pc.filter(values, pa.array(found)), kinds[found], lower))
        return present

    def _column_counts(
        self, encoded: pa.DictionaryArray, present: list[tuple[pa.Array, np.ndarray, bool]]
    ) -> Counter[str]:
        """Cells per kind in one column: exact values, words inside cells, and the patterns."""
        dictionary = encoded.dictionary
        if len(dictionary) == 0:
            return Counter()
        indices = encoded.indices.drop_null().to_numpy(zero_copy_only=False)
        per_entry = np.bincount(indices, minlength=len(dictionary))
        found: dict[str, np.ndarray] = {}

        def mark(kind: str, entries: np.ndarray) -> None:
            found[kind] = found.get(kind, np.zeros(len(dictionary), bool)) | entries

        for values, kinds, lower in present:
            column = pc.utf8_lower(dictionary) if lower else dictionary
            position = pc.index_in(column, value_set=values)
            valid = pc.is_valid(position).to_numpy(zero_copy_only=False)
            if valid.any():
                entry_kinds = kinds[pc.filter(position, valid).to_numpy(zero_copy_only=False)]
                for kind_index in np.unique(entry_kinds):
                    entries = np.zeros(len(dictionary), bool)
                    entries[np.flatnonzero(valid)[entry_kinds == kind_index]] = True
                    mark(self._kinds[kind_index], entries)
        # Secrets inside longer cells: only cells with a separator can hold one as a proper part.
        composite = pc.match_substring_regex(dictionary, _RE2_COMPOSITE)
        for position in np.flatnonzero(composite.to_numpy(zero_copy_only=False)):
            for kind in self._text_counts(dictionary[int(position)].as_py()):
                entries = np.zeros(len(dictionary), bool)
                entries[position] = True
                mark(kind, entries)
        for kind, pattern in ((PATTERN_EMAIL, _EMAIL_RE2), (PATTERN_PHONE, _PHONE_RE2)):
            mark(kind, pc.match_substring_regex(dictionary, pattern).to_numpy(zero_copy_only=False))
        return Counter(
            {
                kind: int(per_entry[entries].sum())
                for kind, entries in found.items()
                if entries.any()
            }
        )

    def _text_counts(self, text: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        lookup = self._text_lookup()
        tokens = _tokens(text)
        for token, n in Counter(tokens).items():
            if (kind := lookup.get(token)) and kind not in _LOWER_KINDS:
                counts[kind] += n
            lower = token.lower()
            # A whole address, else the local part of an address at any domain.
            local = lower.rpartition("@")[0] if "@" in lower else ""
            if kind := self._text_lower.get(lower) or self._text_lower.get(local):
                counts[kind] += n
        for i, token in enumerate(tokens):
            if token not in self._first_tokens:
                continue
            for n in range(2, self._max_ngram + 1):
                kind = lookup.get(" ".join(tokens[i : i + n]))
                if kind and kind not in _LOWER_KINDS:
                    counts[kind] += 1
        return counts

    def scan_table(self, name: str, table: pa.Table) -> list[Hit]:
        """Hits in every string, date and float column of an Arrow table (cells, not values)."""
        encoded = {}
        for column_name in table.column_names:
            column = table[column_name]
            kind_of = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
            if (
                pa.types.is_string(kind_of)
                or pa.types.is_large_string(kind_of)
                or pa.types.is_floating(kind_of)
                # Dates can be birthdays; timestamps are ours (started_at, ...) and their text
                # can equal a coordinate's by chance.
                or pa.types.is_date(kind_of)
            ):
                encoded[column_name] = pc.dictionary_encode(_strings(column))
        hits = []
        if encoded:
            entries = pc.unique(pa.concat_arrays([e.dictionary for e in encoded.values()]))
            present = self._present(entries)
            for column_name, column_encoded in encoded.items():
                counts = self._column_counts(column_encoded, present)
                hits += [Hit(name, column_name, n, kind) for kind, n in sorted(counts.items())]
        return self._record(name, hits)

    def scan_text(self, name: str, text: str, field: str = "text") -> list[Hit]:
        """Hits in free text (a log, an artifact's markdown); counts are occurrences."""
        text = _DATA_URI.sub(" ", text)
        counts = self._text_counts(text)
        counts[PATTERN_EMAIL] += len(_EMAIL_TEXT.findall(text))
        counts[PATTERN_PHONE] += len(_PHONE_TEXT.findall(text))
        hits = [Hit(name, field, n, kind) for kind, n in sorted(counts.items()) if n]
        return self._record(name, hits)

    def scan_lines(self, name: str, lines: Iterable[str], field: str = "message") -> list[Hit]:
        """Hits in log lines; counts are lines with a hit of that kind."""
        counts: Counter[str] = Counter()
        for line in lines:
            line = _DATA_URI.sub(" ", line)
            kinds = set(self._text_counts(line))
            if _EMAIL_TEXT.search(line):
                kinds.add(PATTERN_EMAIL)
            if _PHONE_TEXT.search(line):
                kinds.add(PATTERN_PHONE)
            counts.update(kinds)
        hits = [Hit(name, field, n, kind) for kind, n in sorted(counts.items())]
        return self._record(name, hits)

    def scan_rows(self, name: str, rows: Sequence[Mapping[str, Any]]) -> list[Hit]:
        """Hits in table-artifact or GX-result rows (each value as text, per key)."""
        keys = list(dict.fromkeys(key for row in rows for key in row))
        # Numbers in these rows are counts and figures of ours: as text they can equal a zipcode
        # by chance (a count of 26534), while a leaked value would arrive as a string.
        columns = {
            key: pa.array(
                [
                    None if isinstance(v := row.get(key), int | float) else _as_text(v)
                    for row in rows
                ],
                pa.string(),
            )
            for key in keys
        }
        return self.scan_table(name, pa.table(columns) if columns else pa.table({}))

    def scan_parquet(self, path: Path, name: str | None = None) -> list[Hit]:
        """Hits in a Parquet file's cells and in its key-value metadata."""
        path = Path(path)
        name = name or str(path)
        parquet = pq.ParquetFile(path)
        hits = self.scan_table(name, parquet.read())
        metadata = parquet.schema_arrow.metadata or {}
        text = "\n".join(
            f"{key.decode(errors='replace')} {value.decode(errors='replace')}"
            for key, value in metadata.items()
            if key != b"ARROW:schema"  # the serialized schema itself, already covered by columns
        )
        hits += self.scan_text(name, text, field="metadata")
        return hits

    def scan_duckdb(
        self,
        source: Path | str | duckdb.DuckDBPyConnection,
        tables: Sequence[str] | None = None,
        run_date: dt.date | None = None,
        prefix: str = "duckdb",
    ) -> list[Hit]:
        """Hits in DuckDB tables (all of them by default); with run_date, only that date's rows."""
        if isinstance(source, duckdb.DuckDBPyConnection):
            return self._scan_connection(source, tables, run_date, prefix)
        with duckdb.connect(str(source), read_only=True) as con:
            return self._scan_connection(con, tables, run_date, prefix)

    def _scan_connection(
        self,
        con: duckdb.DuckDBPyConnection,
        tables: Sequence[str] | None,
        run_date: dt.date | None,
        prefix: str,
    ) -> list[Hit]:
        existing = [row[0] for row in con.execute(read_sql("list_tables")).fetchall()]
        if tables is None:
            tables = existing
        elif unknown := sorted(set(tables) - set(existing)):
            raise ValueError(f"no such DuckDB tables: {unknown}")
        hits = []
        for table in tables:
            rows = con.execute(read_sql("table_columns"), {"table_name": table}).fetchall()
            columns = {row[0] for row in rows}
            # Identifiers cannot be bound: the name comes from the catalog and is quoted; the
            # date is bound. Other dates' rows were scanned by their own runs.
            quoted = '"' + table.replace('"', '""') + '"'
            if run_date is not None and "run_date" in columns:
                query = f"select * from {quoted} where run_date = $run_date"
                data = con.sql(query, params={"run_date": run_date}).to_arrow_table()
            else:
                data = con.sql(f"select * from {quoted}").to_arrow_table()
            hits += self.scan_table(f"{prefix}:{table}", data)
        return hits


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)
