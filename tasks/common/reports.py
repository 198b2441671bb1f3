"""The report registry: one declaration per report, read by storage (its stored table), migrations
(the table must exist), the queries, disclosure (its count columns), the charts and the artifacts.

A new report is a SQL file `tasks/sql/<sql>.sql` (its rows for `$run_date`, from persons_anonymized)
and a `register(Report(...))` below; a stored one also needs its table in a new numbered migration.
It lives in `common/` because storage, reporting and their tests all read it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tasks.common.schemas import OLDER_AGE
from tasks.common.sqlfiles import SQL_DIR, read_sql

_KEY = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")  # what a Prefect artifact key may hold
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_PARAMETER = re.compile(r"\$([a-z_][a-z0-9_]*)")

# Names of the chart images, each shown after the section of the report that declares it.
CHART_HISTORY = "germany-gmail-share-history"
CHART_TOP_COUNTRIES = "top-gmail-countries"
CHART_AGE_GROUPS = "gmail-by-age-group"


@dataclass(frozen=True)
class Report:
    """One report: what computes it, what stores it and what people see of it."""

    key: str  # artifact key: stable, so the Prefect UI keeps the report's history
    sql: str  # <sql_dir>/<sql>.sql computes the rows; a stored report's table has the same name
    columns: tuple[str, ...]  # the columns people see, in this order
    counts: tuple[str, ...]  # counts of people: shown as `<k` below k (small-cell suppression)
    # Figures computed from counts (column -> the counts it comes from), hidden with them.
    derived: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    title: str | None = None  # its section in the markdown report; None: chart data, no artifact
    description: str = ""  # the table artifact's description; `{run_date}` is filled in
    charts: tuple[str, ...] = ()  # chart images shown after its section
    stored: bool = True  # rows kept per run date in the table `sql` (needs a migration)
    # How stored rows read back in order: SQL order terms over the table (aliased `report`).
    order_by: tuple[str, ...] = ()
    sql_dir: Path = SQL_DIR

    @property
    def published(self) -> bool:
        """Whether the run publishes it (a table artifact and a section of the markdown)."""
        return self.title is not None

    def query(self) -> str:
        """The report's SQL as a subquery (no final semicolon)."""
        return read_sql(self.sql, self.sql_dir).strip().removesuffix(";")


# How many ranks the top-countries report shows (dense ranks: ties can add rows); SQL binds it
# as $top_ranks, disclosure re-ranks to it among shown counts.
TOP_RANKS = 3

# The values every report SQL may name besides $run_date and $flow_run_id: one definition each.
REPORT_VALUES: Mapping[str, Any] = MappingProxyType(
    {"older_age": OLDER_AGE, "top_ranks": TOP_RANKS}
)


def parameters(sql: str, **values: Any) -> dict[str, Any]:
    """The named parameters `sql` uses, from `values` and REPORT_VALUES (DuckDB refuses extras)."""
    given = {**REPORT_VALUES, **values}
    return {name: given[name] for name in dict.fromkeys(_PARAMETER.findall(sql))}


def stored_query(report: Report) -> str:
    """The statement that reads a stored report's rows for $run_date, in its order."""
    # Identifiers cannot be bound: these come from a registered declaration, checked there.
    order = f"\norder by {', '.join(report.order_by)}" if report.order_by else ""
    return (
        f"select {', '.join(report.columns)}\nfrom {report.sql} as report\n"
        f"where report.run_date = $run_date{order}"
    )


_REGISTRY: dict[str, Report] = {}


def register(report: Report) -> Report:
    """Add a report to the registry (publication order is registration order); return it."""
    if not _KEY.match(report.key):
        raise ValueError(f"report key {report.key!r}: lowercase letters, digits and dashes only")
    if report.key in _REGISTRY:
        raise ValueError(f"report {report.key!r} is registered already")
    names = (report.sql, *report.columns, *report.counts, *report.derived)
    if bad := [n for n in names if not _IDENTIFIER.match(n)]:
        raise ValueError(f"report {report.key!r}: not plain SQL identifiers: {bad}")
    shown = set(report.columns)
    if outside := sorted({*report.counts, *report.derived} - shown):
        raise ValueError(f"report {report.key!r}: count columns not among its columns: {outside}")
    report.query()  # its SQL file must exist now, not at the first run
    _REGISTRY[report.key] = report
    return report


def registered() -> tuple[Report, ...]:
    """Every registered report, in publication order."""
    return tuple(_REGISTRY.values())


def report(key: str) -> Report:
    """The registered report of an artifact key."""
    try:
        return _REGISTRY[key]
    except KeyError:
        raise KeyError(f"unknown report {key!r}; known: {list(_REGISTRY)}") from None


def published_reports() -> tuple[Report, ...]:
    """The reports a run publishes, in order."""
    return tuple(r for r in _REGISTRY.values() if r.published)


def stored_reports() -> tuple[Report, ...]:
    """The reports whose rows are kept per run date, in order."""
    return tuple(r for r in _REGISTRY.values() if r.stored)


_GERMAN_COUNTS = ("german_users", "german_gmail_users")

GERMANY_GMAIL_SHARE = register(
    Report(
        key="germany-gmail-share",
        sql="report_germany_gmail_share",
        columns=(*_GERMAN_COUNTS, "gmail_share_pct"),
        counts=_GERMAN_COUNTS,
        derived={"gmail_share_pct": _GERMAN_COUNTS},
        title="Gmail share of users in Germany",
        description="Gmail users among users in Germany, run {run_date}.",
        charts=(CHART_HISTORY,),
    )
)
TOP_GMAIL_COUNTRIES = register(
    Report(
        key="top-gmail-countries",
        sql="report_top_gmail_countries",
        columns=("rank", "country", "gmail_users"),
        counts=("gmail_users",),
        title=f"Top {TOP_RANKS} countries by Gmail users",
        description=f"Top {TOP_RANKS} countries by Gmail users (dense rank), run {{run_date}}.",
        charts=(CHART_TOP_COUNTRIES,),
        order_by=("rank", "country"),
    )
)
GMAIL_USERS_OVER_60 = register(
    Report(
        key="gmail-users-over-60",
        sql="report_gmail_users_over_60",
        columns=("gmail_users_over_60",),
        counts=("gmail_users_over_60",),
        title=f"Gmail users aged {OLDER_AGE} or over",
        description=f"Gmail users aged {OLDER_AGE} or over, run {{run_date}}.",
        charts=(CHART_AGE_GROUPS,),
    )
)
# The age chart's data: stored like the reports, not published alone. Rows read back in the
# dimension's label order ('[90+]' and '[100+]' would not sort as text).
GMAIL_BY_AGE_GROUP = register(
    Report(
        key="gmail-by-age-group",
        sql="report_gmail_by_age_group",
        columns=("age_group", "gmail_users"),
        counts=("gmail_users",),
        order_by=("(select g.position from age_groups as g where g.age_group = report.age_group)",),
    )
)
