"""No hidden count of a published report can be worked out from what is published.

Every table artifact and chart of a run's report is read back as a reader sees it; the relations
between the figures (the over-60 total, the age chart's sum, the ranked countries, Germany's
counts) are written as integer constraints; and each hidden cell's smallest and largest feasible
value is solved for with scipy's MILP solver, independently of the suppression code. A hidden
count below k may never come out as a single value.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp

from tasks.common.reports import CHART_AGE_GROUPS, CHART_TOP_COUNTRIES, GERMANY_GMAIL_SHARE
from tasks.privacy.suppression import small_cell_note
from tasks.reporting.artifacts import compose_reports
from tasks.reporting.charts import build_charts
from tasks.reporting.compose import shown_report
from tasks.reporting.disclosure import small_counts_hidden
from tasks.reporting.queries import gmail_by_age_group, report_history, report_results
from tasks.storage.database import connect
from tasks.storage.migrations import migrate
from tests.builders import AGE_GROUP_LABELS, analytical_batch
from tests.helpers import age_at, committed_batch
from tests.tasks.privacy.privacy_data import served

RUN_DATE = dt.date(2026, 3, 1)
# Written out from design.md: "aged 60 or over" is these four groups.
OVER_60_GROUPS = ("[60-70]", "[70-80]", "[80-90]", "[90+]")
TOP_RANKS = 3
SECONDARY = "x"


# --- batches --------------------------------------------------------------------------------------


def _age_group(age: int) -> str:
    return "[90+]" if age >= 90 else f"[{age // 10 * 10}-{age // 10 * 10 + 10}]"


@cache
def realistic_batch(records: int, seed: int) -> pa.Table:
    """An analytical batch of records as the local API serves them, generalized here by hand."""
    return analytical_batch(
        (
            {
                "gender": r["gender"],
                "age_group": _age_group(age_at(r["birthday"], RUN_DATE)),
                "email_domain": r["email"].rsplit("@", 1)[1].lower(),
                "country": r["address"]["country"],
                "country_code": r["address"]["country_code"],
            }
            for r in served(records, seed)
        ),
        RUN_DATE,
    )


def gmail_batch(by_age: Mapping[str, list[str]]) -> pa.Table:
    """Gmail users only: for each age group, one user per country named (repeats count)."""
    return analytical_batch(
        (
            {
                "gender": "female",
                "age_group": group,
                "email_domain": "gmail.com",
                "country": country,
                "country_code": "DE" if country == "Germany" else "ZZ",
            }
            for group, countries in by_age.items()
            for country in countries
        ),
        RUN_DATE,
    )


def truth(table: pa.Table) -> dict[str, int]:
    """Every cell's exact value, counted in plain Python from the batch."""
    rows = table.select(["age_group", "email_domain", "country", "country_code"]).to_pylist()
    gmail = [r for r in rows if r["email_domain"] == "gmail.com"]
    ages = Counter(r["age_group"] for r in gmail)
    cells = {f"age:{g}": ages[g] for g in AGE_GROUP_LABELS}
    cells["over-60"] = sum(ages[g] for g in OVER_60_GROUPS)
    cells["german"] = sum(r["country_code"] == "DE" for r in rows)
    cells["german-gmail"] = sum(r["country_code"] == "DE" for r in gmail)
    cells |= {f"country:{c}": n for c, n in Counter(r["country"] for r in gmail).items()}
    return cells


# --- what a reader sees ---------------------------------------------------------------------------


@dataclass
class View:
    """The published figures: a count (int) or its label (`<k`, `x`) per cell."""

    records: int
    cells: dict[str, int | str] = field(default_factory=dict)
    ranks: list[tuple[int, str]] = field(default_factory=list)  # (rank, country cell)


def _bars(figure, k: int) -> dict[str, int | str]:
    """A bar chart's categories and the count each shows; a hidden count must have no bar."""
    (trace,) = figure.data
    out: dict[str, int | str] = {}
    for x, y, text in zip(trace.x, trace.y, trace.text, strict=True):
        shown = text.split(": ")[-1]  # the top-countries chart writes "#rank: count"
        if y is None:
            assert shown in (f"<{k}", SECONDARY), (x, text)
            out[x] = shown
        else:
            assert shown == f"{int(y):,}", (x, y, text)
            out[x] = int(y)
    return out


def read_view(reports: dict[str, pd.DataFrame], by_age, history, records: int, k: int) -> View:
    """Compose the artifacts and charts as a run does, and read the figures back from them."""
    artifacts = compose_reports(RUN_DATE, records, reports, {}, note=small_cell_note(k))
    tables = {a.key: a.table for a in artifacts if a.table is not None}
    figures = build_charts(reports["top-gmail-countries"], by_age, history)
    view = View(records=records)
    view.cells |= {f"age:{g}": v for g, v in _bars(figures[CHART_AGE_GROUPS], k).items()}
    (over_60,) = tables["gmail-users-over-60"]
    view.cells["over-60"] = over_60["gmail_users_over_60"]
    (share,) = tables["germany-gmail-share"]
    view.cells["german"] = share["german_users"]
    view.cells["german-gmail"] = share["german_gmail_users"]
    if isinstance(view.cells["german"], str) or isinstance(view.cells["german-gmail"], str):
        assert isinstance(share["gmail_share_pct"], str), "a share of a hidden count is shown"
    top = tables["top-gmail-countries"]
    view.ranks = [(row["rank"], f"country:{row['country']}") for row in top]
    view.cells |= {f"country:{row['country']}": row["gmail_users"] for row in top}
    chart = _bars(figures[CHART_TOP_COUNTRIES], k)
    assert chart == {row["country"]: row["gmail_users"] for row in top}, "chart and table differ"
    return view


def view_of(table: pa.Table, tmp_path: Path, k: int, *, before: bool = False) -> View:
    """Load a batch, and read its report as published now (or, `before`, as it was published
    before complementary suppression: `<k` only, every stored rank listed)."""
    with connect(tmp_path / f"report-{k}-{before}.duckdb") as con:
        migrate(con)
        committed_batch(con, table, RUN_DATE, "run-1")
        if before:
            # The primary rule alone, as compose applied it before: every stored rank listed.
            stored = report_results(con, RUN_DATE)
            reports = {key: small_counts_hidden(key, df, k) for key, df in stored.items()}
            by_age = small_counts_hidden("gmail-by-age-group", gmail_by_age_group(con, RUN_DATE), k)
            history = small_counts_hidden(GERMANY_GMAIL_SHARE.key, report_history(con), k)
        else:
            shown = shown_report(con, RUN_DATE, k)
            reports, by_age, history = shown.reports, shown.by_age, shown.history
    return read_view(reports, by_age, history, table.num_rows, k)


# --- the reader's equations -----------------------------------------------------------------------


class Model:
    """Integer unknowns for the cells and linear constraints over them."""

    def __init__(self, view: View, exact: Mapping[str, int], k: int) -> None:
        self.names = list(view.cells)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.lower, self.upper = [], []
        for name in self.names:
            low, high = _known_range(view.cells[name], exact.get(name, 0), view.records, k)
            self.lower.append(low)
            self.upper.append(high)
        self.rows: list[np.ndarray] = []
        self.row_bounds: list[tuple[float, float]] = []

    def add(self, terms: Mapping[str, int], low: float = -np.inf, high: float = np.inf) -> None:
        """low <= sum(coefficient * cell) <= high."""
        row = np.zeros(len(self.names))
        for name, coefficient in terms.items():
            row[self.index[name]] += coefficient
        self.rows.append(row)
        self.row_bounds.append((low, high))

    def extreme(self, name: str, sign: int) -> int:
        """The smallest (sign 1) or largest (sign -1) integer value the cell can take."""
        objective = np.zeros(len(self.names))
        objective[self.index[name]] = sign
        result = milp(
            objective,
            integrality=np.ones(len(self.names)),
            bounds=Bounds(self.lower, self.upper),
            constraints=LinearConstraint(
                np.array(self.rows),
                [b[0] for b in self.row_bounds],
                [b[1] for b in self.row_bounds],
            ),
        )
        assert result.status == 0, result.message
        return round(sign * result.fun)


def _known_range(shown: int | str, exact: int, records: int, k: int) -> tuple[int, int]:
    # A count shown is known; `<k` is 1..k-1 (zeros are shown); `x` is at least 1, and at least
    # k when it really is (a reader who knows complements come from shown counts can tell).
    if isinstance(shown, int):
        return shown, shown
    if shown == f"<{k}":
        return 1, k - 1
    assert shown == SECONDARY, shown
    return (k if exact >= k else 1), records


def reader_model(view: View, exact: Mapping[str, int], k: int) -> Model:
    """Everything a reader can write down from the published figures."""
    model = Model(view, exact, k)
    ages = {f"age:{g}": 1 for g in AGE_GROUP_LABELS}
    countries = {name: 1 for _, name in view.ranks}
    model.add({**{f"age:{g}": 1 for g in OVER_60_GROUPS}, "over-60": -1}, 0, 0)
    # The age chart holds every Gmail user, each ranked country some of them, Germany some.
    model.add({**countries, **{a: -1 for a in ages}}, high=0)
    model.add({"german-gmail": 1, **{a: -1 for a in ages}}, high=0)
    model.add({"german-gmail": 1, "german": -1}, high=0)
    model.add(ages, high=view.records)
    model.add({"german": 1}, high=view.records)
    _dense_ranks(model, view)
    return model


def _dense_ranks(model: Model, view: View) -> None:
    # Countries of one rank have equal counts, each rank more than the next; a country that is
    # not listed (Germany, say) has fewer than the last rank when all ranks are listed.
    first = {}
    for rank, name in view.ranks:
        first.setdefault(rank, name)
        if first[rank] != name:
            model.add({name: 1, first[rank]: -1}, 0, 0)
    levels = [first[r] for r in sorted(first)]
    for higher, lower in pairwise(levels):
        model.add({higher: 1, lower: -1}, low=1)
    germany = "country:Germany"
    if germany in model.index:
        model.add({germany: 1, "german-gmail": -1}, 0, 0)
    elif len(levels) == TOP_RANKS:
        model.add({"german-gmail": 1, levels[-1]: -1}, high=-1)


def solved(view: View, exact: Mapping[str, int], k: int) -> dict[str, tuple[int, int]]:
    """Each hidden cell's feasible range given everything published."""
    model = reader_model(view, exact, k)
    hidden = [name for name, shown in view.cells.items() if isinstance(shown, str)]
    ranges = {name: (model.extreme(name, 1), model.extreme(name, -1)) for name in hidden}
    for name, (low, high) in ranges.items():
        # The true values satisfy every constraint, or the model itself is wrong.
        assert low <= exact.get(name, 0) <= high, (name, low, high, exact.get(name))
    return ranges


def determined(view: View, exact: Mapping[str, int], k: int) -> dict[str, int]:
    """Hidden cells below k that come out as a single value, with that value."""
    return {
        name: low
        for name, (low, high) in solved(view, exact, k).items()
        if low == high and exact.get(name, 0) < k
    }


def expected_ranks(exact: Mapping[str, int], k: int) -> list[tuple[int, str]]:
    """Dense ranks among countries with k or more Gmail users, top 3, by rank then name."""
    counts = {name: n for name, n in exact.items() if name.startswith("country:") and n >= k}
    levels = sorted(set(counts.values()), reverse=True)[:TOP_RANKS]
    return sorted((levels.index(n) + 1, name) for name, n in counts.items() if n in levels)


@cache
def view_of_cached(records: int, seed: int, k: int) -> View:
    """view_of a realistic batch, once per process."""
    with tempfile.TemporaryDirectory() as folder:
        return view_of(realistic_batch(records, seed), Path(folder), k)


# --- tests ----------------------------------------------------------------------------------------

# (records, seed, k): small batches hide many counts, large ones few.
REALISTIC = [
    (30, 1, 5),
    (60, 2, 5),
    (120, 3, 5),
    (200, 12, 5),
    (500, 5, 5),
    (1000, 6, 5),
    (3000, 7, 5),
    (100, 13, 3),
    (150, 8, 3),
    (400, 9, 10),
    (2000, 10, 10),
]


@pytest.mark.parametrize(("records", "seed", "k"), REALISTIC)
def test_no_hidden_count_of_a_report_can_be_worked_out(records: int, seed: int, k: int) -> None:
    exact = truth(realistic_batch(records, seed))
    view = view_of_cached(records, seed, k)
    for name, shown in view.cells.items():
        assert shown == exact.get(name, 0) or isinstance(shown, str), name
        if 0 < exact.get(name, 0) < k:
            assert isinstance(shown, str), f"{name} = {exact[name]} is shown"
    assert view.ranks == expected_ranks(exact, k)
    assert determined(view, exact, k) == {}


def test_the_realistic_reports_need_complements() -> None:
    # Not vacuous: some of the batches above do hide a second cell (seen on these seeds).
    hidden = [
        name
        for records, seed, k in REALISTIC
        for name, shown in view_of_cached(records, seed, k).cells.items()
        if shown == SECONDARY
    ]
    assert len(hidden) >= 3, hidden


def test_the_primary_rule_alone_gave_counts_away_in_a_realistic_batch(tmp_path: Path) -> None:
    table = realistic_batch(120, 3)
    exact = truth(table)
    before = determined(view_of(table, tmp_path, 5, before=True), exact, 5)
    # The over-60 total gave away its one hidden age group, and the ranks plus the chart's
    # total gave away every country of the hidden third rank.
    assert {n for n in before if n.startswith("age:")} == {"age:[70-80]"}
    assert sum(n.startswith("country:") for n in before) > 10
    assert determined(view_of(table, tmp_path, 5), exact, 5) == {}


def _spread(users: int, countries: list[str]) -> dict[str, list[str]]:
    """`users` Gmail users over the age groups in turn, their countries in the order given."""
    by_age: dict[str, list[str]] = {g: [] for g in AGE_GROUP_LABELS}
    for i, country in enumerate(countries[:users]):
        by_age[AGE_GROUP_LABELS[i % len(AGE_GROUP_LABELS)]].append(country)
    return by_age


def test_issue_over_60_total_and_one_hidden_age_group(tmp_path: Path) -> None:
    # The issue's report: the age chart hid only [60-70] (2 users), the over-60 total was shown.
    sizes = {"[60-70]": 2, "[70-80]": 6, "[80-90]": 7, "[90+]": 20}
    sizes |= {g: 5 for g in AGE_GROUP_LABELS if g not in sizes}
    unique = iter(f"Country {i}" for i in range(1000))  # one user per country: nothing ranked
    table = gmail_batch({g: [next(unique) for _ in range(n)] for g, n in sizes.items()})
    exact = truth(table)
    before = view_of(table, tmp_path, 5, before=True)
    # (Every country holds one Gmail user, all listed at rank 1 and hidden: they came out too.)
    ages = {n: v for n, v in determined(before, exact, 5).items() if n.startswith("age:")}
    assert ages == {"age:[60-70]": 2}

    after = view_of(table, tmp_path, 5)
    assert determined(after, exact, 5) == {}
    # The complement is the smallest shown over-60 group; the answer itself stays shown.
    hidden = {n: v for n, v in after.cells.items() if isinstance(v, str)}
    assert hidden == {"age:[60-70]": "<5", "age:[70-80]": SECONDARY}
    assert after.cells["over-60"] == 35


def test_issue_hidden_ranks_and_the_charts_total(tmp_path: Path) -> None:
    # The issue's top-gmail-countries: ranks 1 and 2 shown, 52 countries of one Gmail user each
    # at a hidden rank 3, and an age chart whose shown bars add up to every Gmail user.
    ones = [f"Country {i:02}" for i in range(52)]
    countries = ["Germany"] * 12 + ["France"] * 9 + ones
    table = gmail_batch(_spread(len(countries), countries))
    exact = truth(table)
    before = view_of(table, tmp_path, 5, before=True)
    assert determined(before, exact, 5) == {f"country:{c}": 1 for c in ones}

    after = view_of(table, tmp_path, 5)
    assert after.ranks == [(1, "country:Germany"), (2, "country:France")]
    assert not [v for v in after.cells.values() if isinstance(v, str)]
    assert determined(after, exact, 5) == {}


def test_ranked_countries_that_hold_every_gmail_user(tmp_path: Path) -> None:
    # All Gmail users are German: the ranked country's count is the age chart's total, which
    # gives away a lone hidden bar even without the over-60 total.
    sizes = {g: 6 for g in AGE_GROUP_LABELS} | {"[0-10]": 4}
    table = gmail_batch({g: ["Germany"] * n for g, n in sizes.items()})
    exact = truth(table)
    before = view_of(table, tmp_path, 5, before=True)
    assert determined(before, exact, 5) == {"age:[0-10]": 4}

    after = view_of(table, tmp_path, 5)
    assert determined(after, exact, 5) == {}
    assert after.cells["age:[10-20]"] == SECONDARY  # the smallest shown bar, the earliest of ties
