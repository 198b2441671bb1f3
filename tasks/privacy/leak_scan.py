"""Leak scan: look for any raw value of the batch in everything the run wrote.

The scanner never holds the raw values: `secret_hashes` turns each page range's raw source
columns into 64-bit hashes of its identifying values (in the mask task, so the raw rows can be
dropped as soon as they are masked), and `LeakScanner` merges those into sorted hash indexes.
At a million records that is ~100 MB of integers instead of the rows and a set of strings.
It scans tables column by column (each column's distinct cells are hashed and looked up) and
free text (log lines, artifact markdown) token by token and by n-grams, plus two patterns that
need no batch: an e-mail address with a real local part and an E.164 phone number. A hit names
the output, the field and the kind of value, with a count; never the value. An index entry
keeps 60 bits of the hash: at a million records (~11 million secrets, a few million distinct
cells probed) a chance collision happens in about 1 run in 30,000, and is a false alarm (the
run fails naming the field), never a missed leak.

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

from tasks.common.errors import PipelineError
from tasks.common.memdb import cursor
from tasks.common.schemas import AGE_GROUPS, MASK
from tasks.common.sqlfiles import read_sql
from tasks.common.stage import stage_task
from tasks.privacy.domains import email_domain, email_local_part
from tasks.privacy.regions import CONTINENTS, SUB_REGIONS, UNKNOWN

MIN_CELL_LENGTH = 4
MIN_TEXT_LENGTH = 5
MIN_TEXT_NUMBER_LENGTH = 8
_MAX_NGRAM = 8
# Columns are scanned in chunks of this many rows, so a million-row column never sits in memory
# whole (with its distinct values, their lower-case copies and hashes). Hits count cells, so the
# chunks' counts simply add up.
SCAN_CHUNK_ROWS = 131_072

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


class LeakError(PipelineError):
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


def _tokens(text: str) -> list[str]:
    return [t for t in (raw.strip(_EDGE) for raw in _TOKEN.findall(text)) if t]


def _ngrams(values: Iterable[str]) -> set[str]:
    grams: set[str] = set()
    for value in values:
        tokens = _tokens(value)
        for n in range(1, len(tokens) + 1):
            grams.update(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


def hash_strings(values: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """64-bit hashes of strings, in input order (DuckDB's hash(), vectorized)."""
    array = (
        values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, pa.string())
    )
    if len(array) == 0:
        return np.empty(0, np.uint64)
    con = cursor()
    con.register("leak_values", pa.table({"v": _strings(array)}))
    try:
        hashes = con.sql(read_sql("hash_values")).to_arrow_table()["h"]
    finally:
        con.unregister("leak_values")
    return hashes.to_numpy()


# An index entry packs a value's hash and its kind into one uint64: the hash's top 60 bits and the
# kind id in the low 4. Sorting the packed entries sorts by hash, then by kind priority.
_KIND_BITS = 4
_KIND_MASK = np.uint64((1 << _KIND_BITS) - 1)
assert len(SECRET_KINDS) <= 1 << _KIND_BITS


def _pack(hashes: np.ndarray, kinds: int | np.ndarray) -> np.ndarray:
    return (hashes & ~_KIND_MASK) | np.asarray(kinds, np.uint64)


def _prefix(values: np.ndarray) -> np.ndarray:
    return values >> np.uint64(_KIND_BITS)


@dataclass(frozen=True)
class _Index:
    """Sorted packed entries, one per distinct hash, carrying its first (priority) kind."""

    entries: np.ndarray  # uint64, sorted, distinct hash prefixes

    @classmethod
    def build(cls, parts: list[np.ndarray]) -> _Index:
        """Merge packed parts; a hash in several kinds keeps the first in SECRET_KINDS."""
        entries = np.concatenate(parts) if parts else np.empty(0, np.uint64)
        entries.sort()
        # One temporary of prefixes, reused in place: ten million entries are 80 MB each.
        prefix = np.right_shift(entries, np.uint64(_KIND_BITS))
        first = np.empty(len(entries), bool)
        first[:1] = True
        np.not_equal(prefix[1:], prefix[:-1], out=first[1:])
        del prefix
        return cls(entries[first])

    def without(self, hashes: np.ndarray, kinds: frozenset[int] | None = None) -> _Index:
        """The index minus `hashes` (only entries of `kinds`, if given)."""
        # Few hashes against a big sorted index: find each one's slot, then drop those slots.
        probes = np.unique(hashes & ~_KIND_MASK)
        position = np.searchsorted(self.entries, probes)
        inside = position < len(self.entries)
        position, probes = position[inside], probes[inside]
        found = self.entries[position]
        drop = _prefix(found) == _prefix(probes)
        if kinds is not None:
            drop &= np.isin(found & _KIND_MASK, np.array(sorted(kinds), np.uint64))
        return _Index(np.delete(self.entries, position[drop]))

    def lookup(self, probes: np.ndarray) -> np.ndarray:
        """Kind id of each probe hash, -1 where it is not in the index."""
        if len(self.entries) == 0 or len(probes) == 0:
            return np.full(len(probes), -1, np.int8)
        # The smallest packed value with the probe's prefix sorts at or before its entry.
        position = np.searchsorted(self.entries, probes & ~_KIND_MASK)
        position = np.minimum(position, len(self.entries) - 1)
        found = self.entries[position]
        kinds = (found & _KIND_MASK).astype(np.int8)
        return np.where(_prefix(found) == _prefix(probes), kinds, np.int8(-1))

    def __len__(self) -> int:
        return len(self.entries)


@dataclass
class SecretHashes:
    """Hashes of one batch's identifying values (never the values) and the values kept on purpose.

    Built per page range in the mask task, so raw rows are dropped as soon as they are masked;
    each distinct value costs 8 bytes per form (cell, text) instead of the rows themselves.
    """

    cells: np.ndarray  # packed (hash, kind) of whole-cell values
    lower: np.ndarray  # the same for e-mail kinds, lower-cased
    text: np.ndarray  # normalized forms searched in free text
    kept: frozenset[str]  # countries, codes, genders and e-mail domains of the batch
    max_ngram: int  # most tokens in one text form (capped at _MAX_NGRAM)

    @property
    def nbytes(self) -> int:
        """Memory held by the hash arrays."""
        return self.cells.nbytes + self.lower.nbytes + self.text.nbytes


_KIND_ID = {kind: index for index, kind in enumerate(SECRET_KINDS)}
_LOWER_KIND_IDS = frozenset(_KIND_ID[kind] for kind in _LOWER_KINDS)
_LOWER_KIND_LIST = np.array(sorted(_LOWER_KIND_IDS), np.uint64)
_NUMERIC_KIND_IDS = np.array(sorted(_KIND_ID[kind] for kind in NUMERIC_KINDS), np.uint64)


def _kept_in(source: pa.Table) -> set[str]:
    """Values of the batch that legitimately remain in outputs (never searched for)."""
    values: set[str] = set()
    for name in ("country", "country_code", "gender"):
        if name in source.column_names:
            values.update(v for v in pc.unique(_strings(source[name])).to_pylist() if v)
    if "email" in source.column_names:
        domains = email_domain(_strings(source["email"]))
        for domain in pc.unique(domains).to_pylist():
            if domain:
                values.update({domain, domain.lower()})
    return values


def _secret_columns(source: pa.Table) -> dict[str, pa.Array | pa.ChunkedArray]:
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    names = set(source.column_names)
    for kind in SECRET_KINDS:
        if kind == "email_local" and "email" in names:
            email = pc.utf8_lower(_strings(source["email"]))
            columns["email"] = email
            local = email_local_part(email)
            columns[kind] = pc.if_else(pc.equal(local, ""), None, local)
        elif kind == "phone_digits" and "phone" in names:
            columns[kind] = pc.replace_substring_regex(_strings(source["phone"]), r"\D", "")
        elif kind in names and kind != "email":
            columns[kind] = source[kind]
    return {kind: columns[kind] for kind in SECRET_KINDS if kind in columns}


def _text_forms(values: pa.Array, kinds: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """The values as free text shows them (tokens joined by spaces), where long enough to search."""
    # Only values with separators or edge punctuation need the (regex) normalization.
    composite = pc.match_substring_regex(values, _RE2_COMPOSITE).to_numpy(zero_copy_only=False)
    plain = np.flatnonzero(~composite)
    mixed = np.flatnonzero(composite)
    norm = pa.concat_arrays([values.take(plain), _normalized(values.take(mixed))])
    kinds = np.concatenate([kinds[plain], kinds[mixed]])
    length = pc.utf8_length(norm).to_numpy(zero_copy_only=False)
    ok = length >= np.where(
        np.isin(kinds, _NUMERIC_KIND_IDS), MIN_TEXT_NUMBER_LENGTH, MIN_TEXT_LENGTH
    )
    # A standalone local part is only distinctive with a digit, `.` or `_`, or 7+ characters.
    local = kinds == _KIND_ID["email_local"]
    if local.any():
        marked = pc.match_substring_regex(norm, r"[0-9._]").to_numpy(zero_copy_only=False)
        ok &= ~local | marked | (length >= 7)
    keep = np.flatnonzero(ok)
    return norm.take(keep), kinds[keep]


def secret_hashes(source: pa.Table) -> SecretHashes:
    """Hash a batch's raw source columns (ingest.source_schema.SOURCE_SCHEMA) for the leak scan."""
    # Every kind in one array, so each step below is one vectorized call for the whole range
    # (a mask task runs beside fetch threads: each call is a wait for the GIL).
    columns = [
        (_KIND_ID[kind], pc.unique(_strings(column)).drop_null())
        for kind, column in _secret_columns(source).items()
    ]
    values = (
        pa.concat_arrays([column for _, column in columns])
        if columns
        else pa.array([], pa.string())
    )
    kinds = np.concatenate(
        [np.full(len(column), kind, np.uint64) for kind, column in columns]
        or [np.empty(0, np.uint64)]
    )
    long_enough = pc.utf8_length(values).to_numpy(zero_copy_only=False) >= MIN_CELL_LENGTH
    lower = np.isin(kinds, _LOWER_KIND_LIST)
    text, text_kinds = _text_forms(values, kinds)
    hashes = hash_strings(pa.concat_arrays([values, text]))
    cell_hashes, text_hashes = hashes[: len(values)], hashes[len(values) :]
    packed = _pack(cell_hashes, kinds)

    spaces = pc.max(pc.count_substring(text, " ")).as_py() if len(text) else 0
    return SecretHashes(
        # Values are distinct per kind already; the few duplicates left are merged by _Index.
        cells=packed[long_enough & ~lower],
        lower=packed[long_enough & lower],
        text=_pack(text_hashes, text_kinds),
        kept=frozenset(_kept_in(source)),
        max_ngram=min(spaces + 1, _MAX_NGRAM),
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
        self._kinds = list(SECRET_KINDS)
        kept_values = {MASK, "*", "other", UNKNOWN, *AGE_GROUPS, *CONTINENTS, *SUB_REGIONS, *kept}
        for part in parts:
            kept_values |= part.kept
        if run_date is not None:
            kept_values.add(run_date.isoformat())
        kept_array = pa.array(sorted(kept_values), pa.string())
        kept_grams = pa.array(sorted(_ngrams(kept_values)), pa.string())

        def index(name: str) -> _Index:
            return _Index.build([getattr(part, name) for part in parts])

        self._cells = index("cells").without(hash_strings(kept_array))
        # E-mail kinds are compared lower-cased, so a local part such as "jordan" must not stand
        # for the kept country "Jordan".
        self._lower = index("lower").without(hash_strings(pc.utf8_lower(kept_array)))
        # A secret that is also a word sequence inside a kept value (surname "Marshall", country
        # "Marshall Islands") is not searched in free text.
        self._text = (
            index("text")
            .without(hash_strings(kept_grams))
            .without(hash_strings(pc.utf8_lower(kept_grams)), _LOWER_KIND_IDS)
        )
        self._max_ngram = max((p.max_ngram for p in parts), default=1)

    @classmethod
    def from_records(
        cls, records: Sequence[Mapping[str, Any]], run_date: dt.date | None = None, **kwargs: Any
    ) -> LeakScanner:
        """Build from raw records as the API served them (nested `address`)."""
        from tasks.ingest.source_schema import to_source_table

        table, _ = to_source_table(list(records), 0)
        return cls(table, run_date, **kwargs)

    @property
    def secrets(self) -> int:
        """How many distinct values are searched for (cells and text)."""
        return len(self._cells) + len(self._lower) + len(self._text)

    # --- scanning ---------------------------------------------------------------------------------

    def _record(self, output: str, hits: list[Hit]) -> list[Hit]:
        if output not in self.report.outputs_scanned:
            self.report.outputs_scanned.append(output)
        self.report.hits.extend(hits)
        return hits

    def _found(self, candidates: Iterable[str]) -> dict[str, str]:
        """The candidates that are text secrets, with their kind."""
        unique = list(dict.fromkeys(candidates))
        kinds = self._text.lookup(hash_strings(unique))
        return {
            value: self._kinds[kind]
            for value, kind in zip(unique, kinds.tolist(), strict=True)
            if kind >= 0
        }

    def _candidates(self, tokens: list[str]) -> Iterable[str]:
        for i, token in enumerate(tokens):
            yield token
            lower = token.lower()
            yield lower
            if "@" in lower:
                yield lower.rpartition("@")[0]
            for n in range(2, min(self._max_ngram, len(tokens) - i) + 1):
                yield " ".join(tokens[i : i + n])

    def _counts(self, tokens: list[str], found: Mapping[str, str]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for token, n in Counter(tokens).items():
            if (kind := found.get(token)) and kind not in _LOWER_KINDS:
                counts[kind] += n
            lower = token.lower()
            # A whole address, else the local part of an address at any domain.
            local = lower.rpartition("@")[0] if "@" in lower else ""
            for probe in (lower, local):
                if probe and found.get(probe) in _LOWER_KINDS:
                    counts[found[probe]] += n
                    break
        for i in range(len(tokens)):
            for n in range(2, min(self._max_ngram, len(tokens) - i) + 1):
                kind = found.get(" ".join(tokens[i : i + n]))
                if kind and kind not in _LOWER_KINDS:
                    counts[kind] += 1
        return counts

    def _text_counts(self, texts: Sequence[str]) -> list[Counter[str]]:
        """Secrets per kind in each text: one hashed lookup for every token and n-gram of all."""
        token_lists = [_tokens(text) for text in texts]
        found = self._found(c for tokens in token_lists for c in self._candidates(tokens))
        return [self._counts(tokens, found) for tokens in token_lists]

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

        for index, values in ((self._cells, dictionary), (self._lower, pc.utf8_lower(dictionary))):
            kinds = index.lookup(hash_strings(values))
            for kind_id in np.unique(kinds[kinds >= 0]):
                mark(self._kinds[kind_id], kinds == kind_id)
        # Secrets inside longer cells: only cells with a separator can hold one as a proper part.
        composite = np.flatnonzero(
            pc.match_substring_regex(dictionary, _RE2_COMPOSITE).to_numpy(zero_copy_only=False)
        )
        texts = dictionary.take(pa.array(composite, pa.int64())).to_pylist()
        for position, counts in zip(composite, self._text_counts(texts), strict=True):
            for kind in counts:
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

    def _column_hits(
        self, output: str, name: str, chunks: Iterable[pa.Array | pa.ChunkedArray]
    ) -> list[Hit]:
        counts: Counter[str] = Counter()
        for chunk in chunks:
            counts += self._column_counts(pc.dictionary_encode(_strings(chunk)))
        return [Hit(output, name, n, kind) for kind, n in sorted(counts.items())]

    def scan_table(self, name: str, table: pa.Table) -> list[Hit]:
        """Hits in every string, date and float column of an Arrow table (cells, not values)."""
        hits = []
        for column_name in table.column_names:
            column = table[column_name]
            if _scannable(column.type):
                chunks = (
                    column.slice(start, SCAN_CHUNK_ROWS)
                    for start in range(0, len(column), SCAN_CHUNK_ROWS)
                )
                hits += self._column_hits(name, column_name, chunks)
        return self._record(name, hits)

    def scan_text(self, name: str, text: str, field: str = "text") -> list[Hit]:
        """Hits in free text (a log, an artifact's markdown); counts are occurrences."""
        text = _DATA_URI.sub(" ", text)
        counts = self._text_counts([text])[0]
        counts[PATTERN_EMAIL] += len(_EMAIL_TEXT.findall(text))
        counts[PATTERN_PHONE] += len(_PHONE_TEXT.findall(text))
        hits = [Hit(name, field, n, kind) for kind, n in sorted(counts.items()) if n]
        return self._record(name, hits)

    def scan_lines(self, name: str, lines: Iterable[str], field: str = "message") -> list[Hit]:
        """Hits in log lines; counts are lines with a hit of that kind."""
        cleaned = [_DATA_URI.sub(" ", line) for line in lines]
        counts: Counter[str] = Counter()
        for line, found in zip(cleaned, self._text_counts(cleaned), strict=True):
            kinds = set(found)
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
        hits = []
        # One column and one chunk at a time: a million-row file never sits in memory whole.
        for column_name in parquet.schema_arrow.names:
            if _scannable(parquet.schema_arrow.field(column_name).type):
                batches = parquet.iter_batches(SCAN_CHUNK_ROWS, columns=[column_name])
                hits += self._column_hits(name, column_name, (b.column(0) for b in batches))
        self._record(name, hits)
        metadata = parquet.schema_arrow.metadata or {}
        text = "\n".join(
            f"{key.decode(errors='replace')} {value.decode(errors='replace')}"
            for key, value in metadata.items()
            if key != b"ARROW:schema"  # the serialized schema itself, already covered by columns
        )
        return hits + self.scan_text(name, text, field="metadata")

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
            # Identifiers cannot be bound: names come from the catalog and are quoted; the date
            # is bound. Other dates' rows were scanned by their own runs.
            quoted = _quoted(table)
            schema = con.sql(f"select * from {quoted} limit 0").to_arrow_table().schema
            where, params = "", {}
            if run_date is not None and "run_date" in schema.names:
                where, params = " where run_date = $run_date", {"run_date": run_date}
            output, table_hits = f"{prefix}:{table}", []
            # One column and one chunk at a time, as for Parquet. A connection serves one open
            # result at a time, so each reader is drained (and closed) before the next query.
            for column in (f.name for f in schema if _scannable(f.type)):
                query = f"select {_quoted(column)} from {quoted}{where}"
                with con.sql(query, params=params).to_arrow_reader(SCAN_CHUNK_ROWS) as reader:
                    chunks = (batch.column(0) for batch in reader)
                    table_hits += self._column_hits(output, column, chunks)
            hits += self._record(output, table_hits)
        return hits


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _scannable(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (
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


scan_for_leaks_task = stage_task(scan_for_leaks)
