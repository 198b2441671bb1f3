"""Small cells in published reports: counts of 1..k-1 people, and figures derived from them, are
shown as `<k`, and counts that would let a reader work one out from a published total as `x`
(complementary suppression); the exact values stay in DuckDB."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd


def small_cell_label(k: int) -> str:
    """How a count below k is shown, e.g. `<5`."""
    return f"<{k}"


def small_cell_note(k: int) -> str:
    """The sentence a report carries when it applies small-cell suppression."""
    return (
        f"Counts from 1 to {k - 1} are shown as {small_cell_label(k)} (small-cell suppression, "
        f"k = {k}), and so are figures derived from them; exact values stay in DuckDB. "
        f"A count shown as {SECONDARY_LABEL} (at least 1) is hidden so that no "
        f"{small_cell_label(k)} count can be worked out from a published total. Only countries "
        f"with {k} or more Gmail users are ranked."
    )


def suppress_small_counts(
    df: pd.DataFrame,
    columns: Sequence[str],
    k: int,
    derived: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Counts 1..k-1 in `columns` become `<k`; a `derived` column is hidden where its source is.

    Zero stays 0: it counts nobody, so no person can be singled out by it (the practice of
    official statistics and ARX's cell suppression); hiding it too would make every empty cell
    look like a risky one. `derived` maps e.g. a percentage to the counts it is computed from.
    """
    out = df.copy()
    label = small_cell_label(k)

    def small(column: str) -> pd.Series:
        values = pd.to_numeric(df[column], errors="coerce")
        return (values > 0) & (values < k)

    hidden = {column: small(column) for column in columns}
    for column, sources in (derived or {}).items():
        mask = pd.Series(False, index=df.index)
        for source in sources:
            mask |= small(source)
        hidden[column] = mask
    for column, mask in hidden.items():
        if mask.any():
            out[column] = out[column].astype(object).where(~mask, label)
    return out


# --- complementary suppression --------------------------------------------------------------------

# A count hidden only so that a published total cannot give away a `<k` cell by subtraction
# (secondary or complementary suppression). It gets a label of its own because it promises no
# range: it is at least 1 (zeros are always shown), and may be small or large.
SECONDARY_LABEL = "x"

_Bounds = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Relation:
    """Published figures that add up: the `members` counts sum to the `totals` counts (one total
    cell, or several, such as the counts of the only countries with Gmail users)."""

    members: tuple[str, ...]
    totals: tuple[str, ...]

    def terms(self) -> list[tuple[str, int]]:
        """The relation as `sum(sign * cell) == 0`."""
        return [(m, 1) for m in self.members] + [(t, -1) for t in self.totals]

    def cells(self) -> tuple[str, ...]:
        """Every cell the relation mentions."""
        return (*self.members, *self.totals)


def _start_bounds(values: Mapping[str, int], labels: Mapping[str, str], k: int) -> _Bounds:
    # What a reader knows of each cell on its own: a shown count exactly, `<k` 1..k-1, `x` at
    # least 1. An `x` chosen among shown counts is at least k, and a reader who knows how the
    # complement is chosen can tell that much: assume they do.
    bounds: _Bounds = {}
    for cell, value in values.items():
        label = labels.get(cell)
        if label is None:
            bounds[cell] = (value, value)
        elif label == SECONDARY_LABEL:
            bounds[cell] = (k if value >= k else 1, math.inf)
        else:
            bounds[cell] = (1, k - 1)
    return bounds


def _tighten(relation: Relation, bounds: _Bounds) -> bool:
    """Narrow each cell of one relation to what the others allow; True if anything changed."""
    terms = relation.terms()
    changed = False
    for cell, sign in terms:
        # The other terms' sum lies in [low, high], and sign * cell = -(that sum).
        low = sum(s * bounds[c][0] if s > 0 else -bounds[c][1] for c, s in terms if c != cell)
        high = sum(s * bounds[c][1] if s > 0 else -bounds[c][0] for c, s in terms if c != cell)
        span = (-high, -low) if sign > 0 else (low, high)
        old = bounds[cell]
        new = (max(old[0], span[0]), min(old[1], span[1]))
        if new != old:
            bounds[cell], changed = new, True
    return changed


def feasible_bounds(
    values: Mapping[str, int],
    labels: Mapping[str, str],
    relations: Sequence[Relation],
    k: int,
) -> _Bounds:
    """The range each cell can take given everything published: bounds propagated to a fixpoint,
    exact when no two relations share more than one cell (no cycles); looser otherwise."""
    bounds = _start_bounds(values, labels, k)
    # Each pass only narrows integer ranges, so this ends; the cap guards against slow creep.
    for _ in range(100 * (len(relations) + 1)):
        # A list, not a generator: every relation is tightened in each pass.
        if not any([_tighten(relation, bounds) for relation in relations]):
            break
    return bounds


def exposed_cells(
    values: Mapping[str, int],
    labels: Mapping[str, str],
    relations: Sequence[Relation],
    k: int,
) -> list[str]:
    """Hidden cells below k whose value the published figures pin down to a single number."""
    bounds = feasible_bounds(values, labels, relations, k)
    alone = _start_bounds(values, labels, k)

    def pinned(b: tuple[float, float]) -> bool:
        return b[0] == b[1]

    # A `<2` tells its value by itself: no complement can help that, so it does not count here.
    return [c for c in labels if values[c] < k and pinned(bounds[c]) and not pinned(alone[c])]


def _complement(
    cell: str,
    values: Mapping[str, int],
    labels: dict[str, str],
    relations: Sequence[Relation],
    k: int,
) -> str:
    """The cell to hide (as `x`) for an exposed `cell`: the smallest shown count of its relations
    that protects it, else the smallest one, else a `<k` cell of its relations, totals first."""
    order = {name: i for i, name in enumerate(values)}
    mine = [c for r in relations if cell in r.cells() for c in r.cells()]
    # Zeros are no cover: readers know a hidden count is at least 1.
    shown = sorted(
        {c for c in mine if c not in labels and values[c] > 0}, key=lambda c: (values[c], order[c])
    )
    for candidate in shown:
        if cell not in exposed_cells(values, {**labels, candidate: SECONDARY_LABEL}, relations, k):
            return candidate
    if shown:
        return shown[0]
    # Nothing left to hide: widening a `<k` to `x` lifts its upper bound. A total's bound holds
    # all its members down at once, so totals go first.
    totals = [t for r in relations if cell in r.cells() for t in r.totals]
    small = [c for c in (*totals, cell, *mine) if labels.get(c) == small_cell_label(k)]
    if not small:
        raise RuntimeError(f"no cell left to protect {cell!r} by complementary suppression")
    return small[0]


def complementary_suppression(
    values: Mapping[str, int], relations: Sequence[Relation], k: int
) -> dict[str, str]:
    """The label of every hidden cell: `<k` for counts 1..k-1, `x` for the cells hidden so that
    no hidden count below k can be worked out from the published totals (statistical offices'
    complementary suppression). Ties between equally small complements go to the earlier cell."""
    labels = {c: small_cell_label(k) for c, v in values.items() if 0 < v < k}
    while exposed := exposed_cells(values, labels, relations, k):
        # Each step hides one more shown cell or turns a `<k` into `x`: it ends.
        labels[_complement(exposed[0], values, labels, relations, k)] = SECONDARY_LABEL
    return labels
