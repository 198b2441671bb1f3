"""What a run's report shows, figure by figure: counts below k hidden (`<k`), top-country ranks
among shown counts only, and complementary suppression (`x`) wherever published figures add up."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tasks.common.reports import (
    GERMANY_GMAIL_SHARE,
    GMAIL_USERS_OVER_60,
    TOP_GMAIL_COUNTRIES,
    TOP_RANKS,
    Report,
    report,
)
from tasks.common.schemas import OLDER_AGE, age_band
from tasks.privacy.suppression import (
    Relation,
    complementary_suppression,
    suppress_small_counts,
)

OVER_60_CELL = "over-60"
_AGE = "age:"
_COUNTRY = "country:"


def small_counts_hidden(key: str, df: pd.DataFrame, k: int) -> pd.DataFrame:
    """A table as people see it: counts of 1..k-1 (and figures derived from them) as `<k`."""
    return _suppressed(report(key), df, k)


def _suppressed(entry: Report, df: pd.DataFrame, k: int) -> pd.DataFrame:
    return suppress_small_counts(df, entry.counts, k, derived=dict(entry.derived) or None)


def ranked_among_shown(top: pd.DataFrame, k: int) -> pd.DataFrame:
    """The top countries people see: only countries with k or more Gmail users, dense-ranked
    among themselves, so a hidden count neither gets a rank nor pushes a shown one down."""
    shown = top[pd.to_numeric(top["gmail_users"]) >= k].copy()
    ranks = shown["gmail_users"].rank(method="dense", ascending=False)
    shown["rank"] = ranks.astype("int64")
    shown = shown[shown["rank"] <= TOP_RANKS]
    return shown.sort_values(["rank", "country"]).reset_index(drop=True)


def _named(prefix: str, names: pd.Series, counts: pd.Series) -> dict[str, int]:
    return {prefix + str(name): int(n) for name, n in zip(names, counts, strict=True)}


def _cells(by_age: pd.DataFrame, over_60: pd.DataFrame, top: pd.DataFrame) -> dict[str, int]:
    # Earlier cells win ties between equally small complements: age groups in label order first.
    cells = _named(_AGE, by_age["age_group"], by_age["gmail_users"])
    if not over_60.empty:
        cells[OVER_60_CELL] = int(over_60["gmail_users_over_60"].iloc[0])
    return cells | _named(_COUNTRY, top["country"], top["gmail_users"])


def _relations(cells: dict[str, int]) -> list[Relation]:
    """The published figures that add up, written so that two relations share at most one cell
    (the over-60 total), which keeps `feasible_bounds` exact."""
    ages = tuple(c for c in cells if c.startswith(_AGE))
    countries = tuple(c for c in cells if c.startswith(_COUNTRY))
    over_60 = tuple(c for c in ages if age_band(c.removeprefix(_AGE)).lower >= OLDER_AGE)
    relations = []
    if OVER_60_CELL in cells:
        relations.append(Relation(members=over_60, totals=(OVER_60_CELL,)))
        ages = (*(a for a in ages if a not in over_60), OVER_60_CELL)
    # The age chart adds up to all Gmail users, and the ranked countries hold at most all of
    # them. Readers learn that total only when the ranked countries hold every Gmail user.
    if countries and sum(cells[c] for c in countries) == sum(cells[a] for a in ages):
        relations.append(Relation(members=ages, totals=countries))
    return relations


def _labelled(df: pd.DataFrame, column: str, labels: list[str | None]) -> pd.DataFrame:
    if not any(labels):
        return df
    out = df.copy()
    pairs = zip(df[column], labels, strict=True)
    out[column] = [v if label is None else label for v, label in pairs]
    return out


@dataclass(frozen=True)
class Shown:
    """The report tables and chart data as published."""

    reports: dict[str, pd.DataFrame]
    by_age: pd.DataFrame
    history: pd.DataFrame


def shown_figures(
    stored: dict[str, pd.DataFrame], by_age: pd.DataFrame, history: pd.DataFrame, k: int
) -> Shown:
    """Exact stored answers -> what people see: primary and complementary suppression applied."""
    top = ranked_among_shown(stored[TOP_GMAIL_COUNTRIES.key], k)
    over_60 = stored[GMAIL_USERS_OVER_60.key]
    cells = _cells(by_age, over_60, top)
    labels = complementary_suppression(cells, _relations(cells), k)

    def label(prefix: str, names: pd.Series) -> list[str | None]:
        return [labels.get(prefix + str(n)) for n in names]

    reports = {key: small_counts_hidden(key, df, k) for key, df in stored.items()}
    reports[TOP_GMAIL_COUNTRIES.key] = _labelled(
        top, "gmail_users", label(_COUNTRY, top["country"])
    )
    reports[GMAIL_USERS_OVER_60.key] = _labelled(
        over_60, "gmail_users_over_60", [labels.get(OVER_60_CELL)] * len(over_60)
    )
    return Shown(
        reports=reports,
        by_age=_labelled(by_age, "gmail_users", label(_AGE, by_age["age_group"])),
        # The history is the Germany report's table over time: its counts, hidden alike.
        history=_suppressed(GERMANY_GMAIL_SHARE, history, k),
    )
