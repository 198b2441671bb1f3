"""The leak scan's index: 64-bit hashes of a batch's raw values, never the values themselves.

`secret_hashes` turns each page range's raw source columns into hashes of its identifying values
(in the mask task, so the raw rows can be dropped as soon as they are masked), and
`SecretIndex.build` merges those into sorted hash indexes. At a million records that is ~100 MB
of integers instead of the rows and a set of strings. An index entry keeps 60 bits of the hash:
at a million records (~11 million secrets, a few million distinct cells probed) a chance
collision happens in about 1 run in 30,000, and is a false alarm (the run fails naming the
field), never a missed leak.

What is looked for, and what is left out on purpose (each exclusion avoids a false alarm that
would fail a clean run):

- kinds (`SECRET_KINDS`): full emails and email local parts (compared in lower case, as mail
  systems do), first and last names, phones (as served and digits only), streets, street names,
  building numbers, cities, zipcodes, birthdays, latitude and longitude (as text, shortest
  round-trip form) and websites. Matching is case-sensitive except for e-mail values.
- values that legitimately remain in the outputs are never secrets: the vocabularies' values
  (`tasks.common.vocabulary`: country names and codes, genders, public mail providers, `other`),
  the e-mail domains the domain rule kept, the run date, `****`, age groups, region names, `*`.
  Nothing is kept because the batch carries it: a name sent as a country is searched for. A
  secret that is also a word sequence inside a kept value (surname "Marshall", country
  "Marshall Islands") is not searched in free text.
- whole cells: values of 4 or more characters (`MIN_CELL_LENGTH`).
- free text: names, streets, cities, emails and websites need 5 or more characters
  (`MIN_TEXT_LENGTH`), the numeric kinds (zipcodes, building numbers, birthdays, phones,
  coordinates: `NUMERIC_KINDS`) 8 or more (`MIN_TEXT_NUMBER_LENGTH`): counts and timings
  in log lines are numbers too, and a 5-digit zipcode equal to "30000 records" is a
  coincidence, not a leak. A standalone local part (not followed by "@") is only searched in
  text when it holds a digit, `.` or `_`, or is 7+ characters long, so the word "along" does not
  match a local part a+Long.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.memdb import cursor
from tasks.common.schemas import AGE_GROUPS, MASK, MASKED_COLUMNS
from tasks.common.sqlfiles import read_sql
from tasks.common.vocabulary import kept_words
from tasks.privacy.domains import email_local_part
from tasks.privacy.regions import CONTINENTS, SUB_REGIONS, UNKNOWN

MIN_CELL_LENGTH = 4
MIN_TEXT_LENGTH = 5
MIN_TEXT_NUMBER_LENGTH = 8
_MAX_NGRAM = 8

# --- kinds ----------------------------------------------------------------------------------------

# Contact details, each followed by the form it is also searched in (derived from it).
_CONTACT_KINDS = ("email", "email_local", "phone", "phone_digits")
# The API's stock picture URL, the same for every person: it identifies no one.
_NOT_KINDS = frozenset({"image"})


def _secret_kinds() -> tuple[str, ...]:
    """Contact kinds, then the masked columns in schema order with the birthday after the names."""
    kinds = list(_CONTACT_KINDS)
    for column in MASKED_COLUMNS:
        if column not in kinds and column not in _NOT_KINDS:
            kinds.append(column)
        if column == "lastname":
            # Not a masked column (the age replaces it), but a secret all the same.
            kinds.append("birthday")
    return tuple(kinds)


# Source column -> kind of secret. The order matters: a kind's position is its id, packed into
# every index entry, and its priority (a value in two kinds is reported as the first), so
# reordering MASKED_COLUMNS changes which kind a shared value is reported as.
SECRET_KINDS: tuple[str, ...] = _secret_kinds()
KIND_ID = {kind: index for index, kind in enumerate(SECRET_KINDS)}
LOWER_KINDS = frozenset({"email", "email_local"})
# Kinds made of digits and punctuation: they need MIN_TEXT_NUMBER_LENGTH in free text.
NUMERIC_KINDS = frozenset(
    {"phone", "phone_digits", "birthday", "building_number", "zipcode", "latitude", "longitude"}
)
_LOWER_KIND_IDS = frozenset(KIND_ID[kind] for kind in LOWER_KINDS)
_LOWER_KIND_LIST = np.array(sorted(_LOWER_KIND_IDS), np.uint64)
_NUMERIC_KIND_IDS = np.array(sorted(KIND_ID[kind] for kind in NUMERIC_KINDS), np.uint64)

# --- tokens: the form free text is compared in ----------------------------------------------------

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
RE2_COMPOSITE = r"[^\pL\pN_@+.'’\-]|^[.'’\-_]|[.'’\-_]$"


def tokens(text: str) -> list[str]:
    """The words of a text as the scan compares them, edge punctuation stripped."""
    return [t for t in (raw.strip(_EDGE) for raw in _TOKEN.findall(text)) if t]


def _normalized(values: pa.Array) -> pa.Array:
    """Vectorized version of `tokens` joined by spaces (the form text n-grams are compared in)."""
    out = pc.replace_substring_regex(values, _RE2_SEPARATORS, " ")
    out = pc.replace_substring_regex(out, _RE2_LEADING, r"\1")
    out = pc.replace_substring_regex(out, _RE2_TRAILING, r"\1")
    return pc.utf8_trim_whitespace(out)


def _ngrams(values: Iterable[str]) -> set[str]:
    grams: set[str] = set()
    for value in values:
        words = tokens(value)
        for n in range(1, len(words) + 1):
            grams.update(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    return grams


# --- hashes ---------------------------------------------------------------------------------------


def as_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One string array of any column: chunks combined, dictionaries decoded, others cast."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    return values


def hash_strings(values: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """64-bit hashes of strings, in input order (DuckDB's hash(), vectorized)."""
    array = (
        values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, pa.string())
    )
    if len(array) == 0:
        return np.empty(0, np.uint64)
    con = cursor()
    con.register("leak_values", pa.table({"v": as_strings(array)}))
    try:
        hashes = con.sql(read_sql("hash_values")).to_arrow_table()["h"]
    finally:
        con.unregister("leak_values")
    return np.asarray(hashes.to_numpy(), np.uint64)


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


# --- per range: SecretHashes ----------------------------------------------------------------------


@dataclass
class SecretHashes:
    """Hashes of one batch's identifying values (never the values) and the values kept on purpose.

    Built per page range in the mask task, so raw rows are dropped as soon as they are masked;
    each distinct value costs 8 bytes per form (cell, text) instead of the rows themselves.
    """

    cells: np.ndarray  # packed (hash, kind) of whole-cell values
    lower: np.ndarray  # the same for e-mail kinds, lower-cased
    text: np.ndarray  # normalized forms searched in free text
    max_ngram: int  # most tokens in one text form (capped at _MAX_NGRAM)

    @property
    def nbytes(self) -> int:
        """Memory held by the hash arrays."""
        return self.cells.nbytes + self.lower.nbytes + self.text.nbytes


def _secret_columns(source: pa.Table) -> dict[str, pa.Array | pa.ChunkedArray]:
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    names = set(source.column_names)
    for kind in SECRET_KINDS:
        if kind == "email_local" and "email" in names:
            email = pc.utf8_lower(as_strings(source["email"]))
            columns["email"] = email
            local = email_local_part(email)
            columns[kind] = pc.if_else(pc.equal(local, ""), None, local)
        elif kind == "phone_digits" and "phone" in names:
            columns[kind] = pc.replace_substring_regex(as_strings(source["phone"]), r"\D", "")
        elif kind in names and kind != "email":
            columns[kind] = source[kind]
    return {kind: columns[kind] for kind in SECRET_KINDS if kind in columns}


def _text_forms(values: pa.Array, kinds: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """The values as free text shows them (tokens joined by spaces), where long enough to search."""
    # Only values with separators or edge punctuation need the (regex) normalization.
    composite = pc.match_substring_regex(values, RE2_COMPOSITE).to_numpy(zero_copy_only=False)
    plain = np.flatnonzero(~composite)
    mixed = np.flatnonzero(composite)
    norm = pa.concat_arrays([values.take(plain), _normalized(values.take(mixed))])
    kinds = np.concatenate([kinds[plain], kinds[mixed]])
    length = pc.utf8_length(norm).to_numpy(zero_copy_only=False)
    ok = length >= np.where(
        np.isin(kinds, _NUMERIC_KIND_IDS), MIN_TEXT_NUMBER_LENGTH, MIN_TEXT_LENGTH
    )
    # A standalone local part is only distinctive with a digit, `.` or `_`, or 7+ characters.
    local = kinds == KIND_ID["email_local"]
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
        (KIND_ID[kind], pc.unique(as_strings(column)).drop_null())
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
        max_ngram=min(spaces + 1, _MAX_NGRAM),
    )


# --- per run: SecretIndex -------------------------------------------------------------------------

# Values every run's outputs hold on purpose, whatever the batch: the vocabularies (countries,
# codes, genders, public mail providers) and the labels the pipeline itself writes. Nothing the
# batch carries is trusted: a country outside the vocabulary is searched like any other value.
_ALWAYS_KEPT = frozenset({MASK, "*", UNKNOWN, *AGE_GROUPS, *CONTINENTS, *SUB_REGIONS})


def kept_values(run_date: dt.date | None, extra: Iterable[str] = ()) -> set[str]:
    """Values the outputs hold on purpose: never secrets, even where a raw value equals one.

    `extra` is what the caller keeps by a rule of its own: the e-mail domains that the domain
    rule (`tasks.privacy.domains.keep_shared_domains`) kept in this batch.
    """
    kept = {*_ALWAYS_KEPT, *kept_words(), *extra}
    if run_date is not None:
        kept.add(run_date.isoformat())
    return kept


@dataclass(frozen=True)
class SecretIndex:
    """A run's merged indexes: whole cells, lower-cased e-mail cells and text forms."""

    cells: _Index
    lower: _Index
    text: _Index
    max_ngram: int  # most tokens in one text form: the longest n-gram worth looking up

    @classmethod
    def build(cls, parts: Sequence[SecretHashes], kept: Iterable[str]) -> SecretIndex:
        """Merge per-range hashes, minus the kept values (and, in text, their word sequences)."""
        values = sorted(kept)
        kept_array = pa.array(values, pa.string())
        kept_grams = pa.array(sorted(_ngrams(values)), pa.string())

        def index(name: str) -> _Index:
            return _Index.build([getattr(part, name) for part in parts])

        return cls(
            cells=index("cells").without(hash_strings(kept_array)),
            # E-mail kinds are compared lower-cased, so a local part such as "jordan" must not
            # stand for the kept country "Jordan".
            lower=index("lower").without(hash_strings(pc.utf8_lower(kept_array))),
            # A secret that is also a word sequence inside a kept value (surname "Marshall",
            # country "Marshall Islands") is not searched in free text.
            text=index("text")
            .without(hash_strings(kept_grams))
            .without(hash_strings(pc.utf8_lower(kept_grams)), _LOWER_KIND_IDS),
            max_ngram=max((p.max_ngram for p in parts), default=1),
        )

    def __len__(self) -> int:
        return len(self.cells) + len(self.lower) + len(self.text)
