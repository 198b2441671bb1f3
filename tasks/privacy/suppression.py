"""Small cells in published reports: counts of 1..k-1 people, and figures derived from them, are
shown as `<k`; the exact values stay in DuckDB."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd


def small_cell_label(k: int) -> str:
    """How a count below k is shown, e.g. `<5`."""
    return f"<{k}"


def small_cell_note(k: int) -> str:
    """The sentence a report carries when it applies small-cell suppression."""
    return (
        f"Counts from 1 to {k - 1} are shown as {small_cell_label(k)} (small-cell suppression, "
        f"k = {k}), and so are figures derived from them; exact values stay in DuckDB."
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
