"""The k-anonymous shareable extract: a generalization lattice plus local suppression.

Everything here is vectorized (pyarrow compute and numpy over dictionary codes); Python only
loops over distinct values, generalization candidates and quasi-identifiers, never over records.

The shareable extract
---------------------
`shareable_extract` makes the analytical batch k-anonymous on its quasi-identifiers in two
documented steps:

1. Global generalization: every candidate of a small lattice is tried, one level per
   quasi-identifier (`HIERARCHY_LEVELS`):

   - age_group:    10-year groups -> 20-year groups ([0-20] ... [60-80], [80+]) -> `*`
   - country:      country -> UN M49 sub-region -> continent -> `*` (tasks/privacy/regions.py)
   - email_domain: domain (rare ones already `other`) -> gmail/hotmail/yahoo/other -> `*`
   - gender:       as-is -> `*`

2. Local suppression, per candidate: records in equivalence classes smaller than k get their
   most specific remaining quasi-identifier (most distinct values at that level) set to `*`;
   classes are recomputed and the next one is suppressed for records still below k, until every
   class holds >= k records. Records that are still below k once every quasi-identifier is `*`
   (fewer than k of them in the all-`*` class) are removed and counted: a class of fewer than k
   rows would break k-anonymity, however little it says.

The chosen candidate shows the fewest `*` cells in the extract: cells suppressed locally plus
cells of a column generalized to `*` wholesale (a whole column of `*` is n suppressed cells, so
"generalize everything away" never wins for free). Ties go to fewer removed records, then to the
lower (more informative) generalization levels.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.schemas import AGE_BAND_YEARS, AGE_BANDS, AgeBand, ArrayLike
from tasks.common.tasks import as_task
from tasks.common.vocabulary import OTHER_DOMAIN
from tasks.privacy.domains import KEEP_DOMAINS, collapse_rare_domains
from tasks.privacy.regions import map_codes
from tasks.privacy.risk import DEFAULT_K, QUASI_IDENTIFIERS, RiskMetrics, risk_metrics
from tasks.storage.batches import stage_shareable
from tasks.storage.lake import AtomicParquetWriter, shareable_writer

SUPPRESSED = "*"

# Extract column per quasi-identifier; geography is called region at every level.
EXTRACT_COLUMN = {"country": "region", "country_code": "region"}
SHAREABLE_COLUMNS: tuple[str, ...] = ("run_date", "gender", "age_group", "region", "email_domain")

WIDER_AGE_YEARS = 2 * AGE_BAND_YEARS

# Level names per quasi-identifier, most specific first; the last level is always `*`.
HIERARCHY_LEVELS: dict[str, tuple[str, ...]] = {
    "age_group": (f"{AGE_BAND_YEARS}-year groups", f"{WIDER_AGE_YEARS}-year groups", SUPPRESSED),
    "country": ("country", "sub-region (UN M49)", "continent", SUPPRESSED),
    "country_code": ("country", "sub-region (UN M49)", "continent", SUPPRESSED),
    "email_domain": ("domain (rare ones as other)", "gmail/hotmail/yahoo/other", SUPPRESSED),
    "gender": ("as-is", SUPPRESSED),
}
_DEFAULT_LEVELS = ("as-is", SUPPRESSED)


_OPEN_BAND = next(band for band in AGE_BANDS if band.upper is None)


def _wider_group(band: AgeBand) -> str:
    """The label of the group twice as wide that holds `band`."""
    lower = band.lower - band.lower % WIDER_AGE_YEARS
    upper = lower + WIDER_AGE_YEARS
    # The open band has no upper bound to split: a wider group reaching into it is open too.
    return AgeBand(lower, None if upper > _OPEN_BAND.lower else upper).label


# Age group label -> the label of the group twice as wide that holds it ([60-70] -> [60-80],
# [80-90] and [90+] -> [80+]), from the analytical bands (tasks.common.schemas.AGE_BANDS).
WIDER_AGE_GROUPS: dict[str, str] = {band.label: _wider_group(band) for band in AGE_BANDS}


# --- generalization hierarchies -------------------------------------------------------------------


def _plain(values: ArrayLike) -> pa.Array:
    values = pc.cast(values, pa.string())
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _map_distinct(values: ArrayLike, fn: Callable[[str | None], str | None]) -> pa.Array:
    # Map each distinct value once (a few thousand at most), then take per record.
    encoded = pc.dictionary_encode(_plain(values), null_encoding="encode")
    mapped = pa.array([fn(v) for v in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(mapped, encoded.indices)


def levels_of(quasi_identifier: str) -> tuple[str, ...]:
    """The generalization level names of a quasi-identifier, most specific first."""
    return HIERARCHY_LEVELS.get(quasi_identifier, _DEFAULT_LEVELS)


def generalized(table: pa.Table, quasi_identifier: str, level: int) -> pa.Array:
    """The quasi-identifier's column at a generalization level (see HIERARCHY_LEVELS)."""
    names = levels_of(quasi_identifier)
    if not 0 <= level < len(names):
        raise ValueError(f"{quasi_identifier} has levels 0..{len(names) - 1}, not {level}")
    if names[level] == SUPPRESSED:
        return pa.repeat(pa.scalar(SUPPRESSED, pa.string()), table.num_rows)
    values = table[quasi_identifier]
    if level == 0:
        return _plain(values)
    if quasi_identifier == "age_group":
        return _map_distinct(
            values, lambda v: WIDER_AGE_GROUPS.get(v, v) if v is not None else None
        )
    if quasi_identifier == "email_domain":
        return _map_distinct(
            values, lambda v: v if v is None or v in KEEP_DOMAINS else OTHER_DOMAIN
        )
    if quasi_identifier in ("country", "country_code"):
        if "country_code" not in table.column_names:
            raise ValueError("geography above country level needs the country_code column")
        return map_codes(table["country_code"], ("sub_region", "continent")[level - 1])
    raise ValueError(f"no level {level} for {quasi_identifier}")  # pragma: no cover


# --- the shareable extract ------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One generalization candidate of the lattice and what local suppression cost it."""

    levels: tuple[int, ...]
    steps: str
    suppressed_cells: int  # cells set to `*` by local suppression (removed records included)
    generalized_cells: int  # cells of columns generalized to `*` wholesale
    records_removed: int

    @property
    def star_cells(self) -> int:
        """Cells the extract shows as `*`: the figure the search minimises."""
        return self.suppressed_cells + self.generalized_cells

    def rank(self) -> tuple[int, int, int, tuple[int, ...]]:
        """Sort key: fewest `*` cells, fewest removed records, lowest levels."""
        return (self.star_cells, self.records_removed, sum(self.levels), self.levels)


@dataclass(frozen=True)
class ShareableExtract:
    """The k-anonymous extract, how it was made, and its own risk figures."""

    table: pa.Table
    k: int
    quasi_identifiers: tuple[str, ...]
    steps: dict[str, str]  # quasi-identifier -> chosen level name
    levels: tuple[int, ...]
    suppressed_cells: int
    suppressed_by_column: dict[str, int]
    generalized_cells: int
    records_removed: int
    k_min: int
    metrics: RiskMetrics
    candidates: list[Candidate] = field(repr=False)
    seconds: float = 0.0

    @property
    def steps_text(self) -> str:
        """The chosen steps in one line, e.g. `age_group: 20-year groups; country: continent`."""
        return "; ".join(f"{qi}: {name}" for qi, name in self.steps.items())

    def as_run_columns(self) -> dict[str, Any]:
        """The extract's figures as pipeline_runs columns."""
        return {
            "extract_k_min": self.k_min,
            "extract_records": self.table.num_rows,
            "extract_suppressed_cells": self.suppressed_cells,
            "extract_records_removed": self.records_removed,
            "extract_steps": self.steps_text,
        }


def _codes(values: pa.Array) -> tuple[np.ndarray, int]:
    encoded = pc.dictionary_encode(values, null_encoding="encode")
    # int32 codes (half the memory of 12 levels x a million records); `_keys` widens them.
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return codes, len(encoded.dictionary)


def _keys(codes: Sequence[np.ndarray], radices: Sequence[int]) -> np.ndarray:
    # Mixed-radix number of the code tuple: one int64 per record identifies its class.
    key = np.zeros(len(codes[0]) if codes else 0, np.int64)
    for code, radix in zip(codes, radices, strict=True):
        key = key * radix + code
    return key


def _sizes(key: np.ndarray) -> np.ndarray:
    # Class size of every record: hash the keys (pyarrow), count per class, take back per record.
    indices = pc.dictionary_encode(pa.array(key)).indices.to_numpy(zero_copy_only=False)
    return np.asarray(np.bincount(indices)[indices])


def _suppress(
    codes: list[np.ndarray], cards: list[int], k: int
) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Greedy local suppression: (rows suppressed per QI, rows removed, QIs suppressible)."""
    radices = [card + 1 for card in cards]  # code `card` is the `*` of that column
    rows = np.flatnonzero(_sizes(_keys(codes, radices)) < k)
    suppressed = [np.empty(0, np.int64) for _ in codes]
    sub = [code[rows] for code in codes]
    # Most specific first; a column with a single value cannot merge classes by being hidden.
    order = sorted((q for q, card in enumerate(cards) if card > 1), key=lambda q: -cards[q])
    for q in order:
        if rows.size == 0:
            break
        sub[q] = np.full(rows.size, cards[q], np.int64)
        suppressed[q] = np.concatenate([suppressed[q], rows])
        # Suppressed rows can only merge with each other (no unsuppressed row has `*` in q).
        small = _sizes(_keys(sub, radices)) < k
        rows, sub = rows[small], [code[small] for code in sub]
    return suppressed, rows, len(order)


def _steps_text(qis: Sequence[str], levels: Sequence[int]) -> str:
    return "; ".join(f"{qi}: {levels_of(qi)[lv]}" for qi, lv in zip(qis, levels, strict=True))


def _checked_inputs(
    analytical: pa.Table, k: int, quasi_identifiers: Sequence[str]
) -> tuple[str, ...]:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    qis = tuple(quasi_identifiers)
    if not qis:
        raise ValueError("name at least one quasi-identifier")
    if missing := sorted(set(qis) - set(analytical.column_names)):
        raise ValueError(f"analytical batch lacks quasi-identifiers {missing}")
    return qis


# The best candidate of the lattice with what it suppresses: (candidate, rows suppressed per
# quasi-identifier, rows removed).
Chosen = tuple[Candidate, list[np.ndarray], np.ndarray]


def _search(analytical: pa.Table, qis: tuple[str, ...], k: int) -> tuple[Chosen, list[Candidate]]:
    """Try every candidate of the lattice; the best one (fewest `*` cells) and all of them."""
    # Integer codes of every (quasi-identifier, level), computed once; the labels themselves are
    # only rebuilt for the chosen levels (a million strings per level otherwise stay in memory).
    coded = {
        (q, lv): _codes(generalized(analytical, q, lv))
        for q in qis
        for lv in range(len(levels_of(q)))
    }
    candidates: list[Candidate] = []
    # Only the best candidate's row arrays are kept: at a million records the fine levels
    # suppress hundreds of thousands of rows each, and 72 candidates of those add up.
    chosen: Chosen | None = None
    for levels in itertools.product(*(range(len(levels_of(q))) for q in qis)):
        pairs = list(zip(qis, levels, strict=True))
        codes = [coded[pair][0] for pair in pairs]
        cards = [coded[pair][1] for pair in pairs]
        suppressed, removed, suppressible = _suppress(codes, cards, k)
        wholesale = sum(levels_of(q)[lv] == SUPPRESSED for q, lv in pairs)
        # A removed record loses every cell: those of single-valued columns, which the greedy
        # never hides, count as suppressed too.
        removed_extra = removed.size * (len(qis) - wholesale - suppressible)
        candidate = Candidate(
            levels=tuple(levels),
            steps=_steps_text(qis, levels),
            suppressed_cells=sum(rows.size for rows in suppressed) + removed_extra,
            generalized_cells=wholesale * analytical.num_rows,
            records_removed=int(removed.size),
        )
        candidates.append(candidate)
        if chosen is None or candidate.rank() < chosen[0].rank():
            chosen = (candidate, suppressed, removed)
    assert chosen is not None  # the lattice always has at least one candidate
    return chosen, candidates


def shareable_extract(
    analytical: pa.Table,
    k: int = DEFAULT_K,
    quasi_identifiers: Sequence[str] = QUASI_IDENTIFIERS,
    keep_domains: frozenset[str] = KEEP_DOMAINS,
) -> ShareableExtract:
    """A k-anonymous extract without person_key: lattice generalization plus local suppression."""
    started = time.perf_counter()
    qis = _checked_inputs(analytical, k, quasi_identifiers)
    if "email_domain" in qis:
        # The extract builds on the collapsed domains (idempotent if the caller collapsed them).
        analytical, _ = collapse_rare_domains(analytical, k, keep_domains)
    (best, suppressed, removed), candidates = _search(analytical, qis, k)
    chosen = list(zip(qis, best.levels, strict=True))
    labels = {(q, lv): generalized(analytical, q, lv) for q, lv in chosen}
    table = _build_extract(analytical, qis, best.levels, labels, suppressed, removed)
    output_qis = [EXTRACT_COLUMN.get(q, q) for q in qis]
    metrics = risk_metrics(
        table,
        output_qis,
        k,
        sensitive=EXTRACT_COLUMN.get("email_domain", "email_domain"),
        l_classes=[c for c in output_qis if c != "email_domain"] or output_qis,
    )
    return ShareableExtract(
        table=table,
        k=k,
        quasi_identifiers=qis,
        steps={q: levels_of(q)[lv] for q, lv in chosen},
        levels=best.levels,
        suppressed_cells=best.suppressed_cells,
        suppressed_by_column={
            EXTRACT_COLUMN.get(q, q): int(rows.size)
            for q, rows in zip(qis, suppressed, strict=True)
        },
        generalized_cells=best.generalized_cells,
        records_removed=best.records_removed,
        k_min=metrics.k_min,
        metrics=metrics,
        candidates=candidates,
        seconds=time.perf_counter() - started,
    )


def _build_extract(
    analytical: pa.Table,
    qis: Sequence[str],
    levels: Sequence[int],
    labels: Mapping[tuple[str, int], pa.Array],
    suppressed: Sequence[np.ndarray],
    removed: np.ndarray,
) -> pa.Table:
    n = analytical.num_rows
    columns: dict[str, pa.Array] = {}
    if "run_date" in analytical.column_names:
        columns["run_date"] = analytical["run_date"].combine_chunks()
    for q, lv, rows in zip(qis, levels, suppressed, strict=True):
        mask = np.zeros(n, bool)
        mask[rows] = True
        columns[EXTRACT_COLUMN.get(q, q)] = pc.if_else(
            pa.array(mask), pa.scalar(SUPPRESSED, pa.string()), labels[(q, lv)]
        )
    keep = np.ones(n, bool)
    keep[removed] = False
    # persons_shareable's column order first, then any other configured quasi-identifier.
    names = [c for c in SHAREABLE_COLUMNS if c in columns]
    names += [c for c in columns if c not in names]
    table = pa.table({name: columns[name] for name in names}).filter(pa.array(keep))
    # Sorted by value, so the row order carries nothing from the source or the analytical table
    # (whose order would otherwise link each row back to a person_key).
    order = [(c, "ascending", "at_end") for c in table.column_names]
    return table.take(pc.sort_indices(table, sort_keys=order))


@dataclass
class Protected:
    """Risk figures of the analytical batch and the k-anonymous extract, staged for the date."""

    metrics: RiskMetrics
    extract: ShareableExtract
    writer: AtomicParquetWriter  # the staged extract file, renamed into place at the commit


def protect_privacy(
    con: duckdb.DuckDBPyConnection,
    lake_dir: Path,
    analytical: pa.Table,
    run_date: dt.date,
    flow_run_id: str,
    k: int,
    quasi_identifiers: tuple[str, ...],
) -> Protected:
    """Measure re-identification risk; build and stage the k-anonymous extract (table and file)."""
    metrics = risk_metrics(analytical, quasi_identifiers, k)
    extract = shareable_extract(analytical, k)
    stage_shareable(con, extract.table, run_date, flow_run_id)
    metadata = {"run_date": str(run_date), "flow_run_id": flow_run_id}
    writer = shareable_writer(extract.table, lake_dir, run_date, metadata, owner=flow_run_id)
    return Protected(metrics=metrics, extract=extract, writer=writer)


protect_privacy_task = as_task(protect_privacy)
