"""The report SQL files and tasks.reporting.queries, on small hand-made batches."""

from __future__ import annotations

import datetime
import math
from collections import Counter

import duckdb
import pandas as pd
import pytest

from tasks.common.reports import parameters, published_reports, registered, report
from tasks.reporting.queries import (
    gmail_by_age_group,
    report_history,
    report_results,
    report_rows,
)
from tests.builders import AGE_GROUP_LABELS, analytical_batch
from tests.helpers import committed_batch

DAY_1 = datetime.date(2024, 5, 1)
DAY_2 = datetime.date(2024, 5, 2)


def person(
    country_code: str | None,
    email_domain: str | None,
    age_group: str | None = "[30-40]",
    country: str | None = None,
) -> dict:
    return {
        "country_code": country_code,
        "email_domain": email_domain,
        "age_group": age_group,
        "country": country if country is not None else f"Country {country_code}",
    }


def load(con: duckdb.DuckDBPyConnection, people: list[dict], run_date: datetime.date) -> None:
    rows = [{"gender": "female", **p} for p in people]
    committed_batch(con, analytical_batch(rows, run_date), run_date, f"run-{run_date.isoformat()}")


def live_report(con: duckdb.DuckDBPyConnection, key: str, run_date: datetime.date) -> pd.DataFrame:
    """A report's SQL file run on persons_anonymized now, as the load runs it."""
    sql = report(key).query()
    return con.execute(sql, parameters(sql, run_date=run_date)).df()


def both(con: duckdb.DuckDBPyConnection, key: str, run_date: datetime.date) -> pd.DataFrame:
    """The live query's result, after checking the stored copy is identical."""
    live = live_report(con, key, run_date)
    stored = report_rows(con, key, run_date)
    pd.testing.assert_frame_equal(live, stored, check_dtype=False)
    return live


def test_report_keys_are_stable() -> None:
    # The Prefect UI keeps each key's history: renaming one starts a new one.
    assert [r.key for r in published_reports()] == [
        "germany-gmail-share",
        "top-gmail-countries",
        "gmail-users-over-60",
    ]
    assert [r.key for r in registered() if not r.published] == ["gmail-by-age-group"]


def test_germany_gmail_share(con: duckdb.DuckDBPyConnection) -> None:
    people = [
        person("DE", "gmail.com", country="Germany"),
        person("DE", "gmail.com", country="Germany"),
        # Matched on the code whatever the name says.
        person("DE", "gmail.com", country="Deutschland"),
        person("DE", "googlemail.com"),  # not gmail.com
        person("DE", "yahoo.com"),
        person("DE", None),  # no domain still counts as a German user
        person("DE", "mail.gmail.com"),  # a subdomain is not gmail.com
        person("AT", "gmail.com", country="Germany"),  # name says Germany, code does not
        person("FR", "gmail.com"),
    ]
    load(con, people, DAY_1)
    german = [p for p in people if p["country_code"] == "DE"]
    german_gmail = [p for p in german if p["email_domain"] == "gmail.com"]
    result = both(con, "germany-gmail-share", DAY_1)

    assert list(result.columns) == ["german_users", "german_gmail_users", "gmail_share_pct"]
    assert len(result) == 1
    row = result.iloc[0]
    assert (row.german_users, row.german_gmail_users) == (len(german), len(german_gmail)) == (7, 3)
    assert row.gmail_share_pct == pytest.approx(42.86)  # 3 / 7 = 42.857..%, 2 decimals


def test_germany_gmail_share_without_german_users(con: duckdb.DuckDBPyConnection) -> None:
    load(con, [person("FR", "gmail.com"), person("AT", "gmail.com")], DAY_1)
    result = both(con, "germany-gmail-share", DAY_1)
    assert len(result) == 1
    row = result.iloc[0]
    assert (row.german_users, row.german_gmail_users) == (0, 0)
    assert row.gmail_share_pct is None or math.isnan(row.gmail_share_pct)


def test_germany_gmail_share_on_a_date_without_rows(con: duckdb.DuckDBPyConnection) -> None:
    result = live_report(con, "germany-gmail-share", DAY_2)
    assert len(result) == 1
    assert (result.iloc[0].german_users, result.iloc[0].german_gmail_users) == (0, 0)


def gmail_people(counts: dict[str, int]) -> list[dict]:
    people = []
    for country, n in counts.items():
        people += [person(country[:2].upper(), "gmail.com", country=country)] * n
        # Non-Gmail users that would change the ranking if they were counted.
        people += [person(country[:2].upper(), "hotmail.com", country=country)] * (10 - n)
    return people


def dense_top3(counts: dict[str, int], top: int = 3) -> list[tuple[int, str, int]]:
    """Independent dense rank <= top over gmail counts, ordered by rank then country."""
    distinct = sorted({n for n in counts.values() if n > 0}, reverse=True)
    ranks = {n: i + 1 for i, n in enumerate(distinct)}
    rows = [(ranks[n], country, n) for country, n in counts.items() if n > 0 and ranks[n] <= top]
    return sorted(rows)


def top_rows(result: pd.DataFrame) -> list[tuple[int, str, int]]:
    return [(int(r), str(c), int(n)) for r, c, n in result.itertuples(index=False)]


def test_top_gmail_countries_tie_for_third(con: duckdb.DuckDBPyConnection) -> None:
    counts = {"Brazil": 5, "Chile": 4, "Denmark": 2, "Austria": 2, "Egypt": 1, "Fiji": 0}
    load(con, gmail_people(counts), DAY_1)
    result = both(con, "top-gmail-countries", DAY_1)
    assert list(result.columns) == ["rank", "country", "gmail_users"]
    expected = [(1, "Brazil", 5), (2, "Chile", 4), (3, "Austria", 2), (3, "Denmark", 2)]
    assert top_rows(result) == expected == dense_top3(counts)


def test_top_gmail_countries_tie_for_first(con: duckdb.DuckDBPyConnection) -> None:
    counts = {"Chile": 3, "Brazil": 3, "Denmark": 2, "Egypt": 1, "Austria": 1, "Fiji": 0}
    load(con, gmail_people(counts), DAY_1)
    expected = [
        (1, "Brazil", 3),
        (1, "Chile", 3),
        (2, "Denmark", 2),
        (3, "Austria", 1),
        (3, "Egypt", 1),
    ]
    assert top_rows(both(con, "top-gmail-countries", DAY_1)) == expected == dense_top3(counts)


@pytest.mark.parametrize("top", [1, 2, 4])
def test_top_gmail_countries_cut_at_the_bound(con: duckdb.DuckDBPyConnection, top: int) -> None:
    # The cut is the bound $top_ranks (one definition, tasks.common.reports.TOP_RANKS), not a
    # number written into the SQL: another value gives another cut.
    counts = {"Brazil": 5, "Chile": 4, "Denmark": 2, "Austria": 2, "Egypt": 1, "Fiji": 0}
    load(con, gmail_people(counts), DAY_1)
    sql = report("top-gmail-countries").query()
    result = con.execute(sql, parameters(sql, run_date=DAY_1, top_ranks=top)).df()
    assert top_rows(result) == dense_top3(counts, top)
    assert len({rank for rank, _, _ in top_rows(result)}) == top


def test_top_gmail_countries_fewer_than_three(con: duckdb.DuckDBPyConnection) -> None:
    load(con, gmail_people({"Brazil": 1, "Chile": 0}), DAY_1)
    assert top_rows(both(con, "top-gmail-countries", DAY_1)) == [(1, "Brazil", 1)]


def test_top_gmail_countries_without_gmail(con: duckdb.DuckDBPyConnection) -> None:
    load(con, [person("DE", "yahoo.com")], DAY_1)
    assert both(con, "top-gmail-countries", DAY_1).empty


def test_gmail_users_over_60_boundaries(con: duckdb.DuckDBPyConnection) -> None:
    people = [
        person("DE", "gmail.com", "[50-60]"),  # 59 at most: not over 60
        person("DE", "gmail.com", "[60-70]"),
        person("DE", "gmail.com", "[60-70]"),
        person("FR", "gmail.com", "[70-80]"),
        person("FR", "gmail.com", "[80-90]"),
        person("FR", "gmail.com", "[90+]"),
        person("FR", "gmail.com", "[90+]"),
        person("FR", "gmail.com", None),  # unknown age: not counted
        person("FR", "yahoo.com", "[90+]"),  # not gmail
        person("FR", "gmail.com", "[0-10]"),
    ]
    load(con, people, DAY_1)
    over_60_groups = {"[60-70]", "[70-80]", "[80-90]", "[90+]"}
    expected = sum(
        1 for p in people if p["email_domain"] == "gmail.com" and p["age_group"] in over_60_groups
    )
    result = both(con, "gmail-users-over-60", DAY_1)
    assert list(result.columns) == ["gmail_users_over_60"]
    assert result["gmail_users_over_60"].tolist() == [expected] == [6]


def test_gmail_users_over_60_none(con: duckdb.DuckDBPyConnection) -> None:
    load(con, [person("DE", "gmail.com", "[50-60]")], DAY_1)
    assert both(con, "gmail-users-over-60", DAY_1)["gmail_users_over_60"].tolist() == [0]


def test_gmail_by_age_group_fills_every_group(con: duckdb.DuckDBPyConnection) -> None:
    people = [
        person("DE", "gmail.com", "[90+]"),
        person("DE", "gmail.com", "[90+]"),
        person("DE", "gmail.com", "[10-20]"),
        person("DE", "gmail.com", "[0-10]"),
        person("DE", "hotmail.com", "[40-50]"),
    ]
    load(con, people, DAY_1)
    counts = Counter(p["age_group"] for p in people if p["email_domain"] == "gmail.com")
    result = both(con, "gmail-by-age-group", DAY_1)
    assert list(result.columns) == ["age_group", "gmail_users"]
    assert result["age_group"].tolist() == list(AGE_GROUP_LABELS)
    assert result["gmail_users"].tolist() == [counts.get(group, 0) for group in AGE_GROUP_LABELS]
    pd.testing.assert_frame_equal(gmail_by_age_group(con, DAY_1), result, check_dtype=False)


def test_report_results_reads_stored_reports_for_a_date(con: duckdb.DuckDBPyConnection) -> None:
    load(con, [person("DE", "gmail.com", "[60-70]"), person("DE", "yahoo.com")], DAY_1)
    load(con, [person("FR", "gmail.com")] * 3, DAY_2)
    results = report_results(con, DAY_1)
    assert list(results) == [r.key for r in published_reports()]
    assert results["germany-gmail-share"].to_dict("records") == [
        {"german_users": 2, "german_gmail_users": 1, "gmail_share_pct": 50.0}
    ]
    assert top_rows(results["top-gmail-countries"]) == [(1, "Country DE", 1)]
    assert results["gmail-users-over-60"]["gmail_users_over_60"].tolist() == [1]
    for frame in results.values():
        assert "run_date" not in frame.columns and "flow_run_id" not in frame.columns
    assert top_rows(report_results(con, DAY_2)["top-gmail-countries"]) == [(1, "Country FR", 3)]


def test_report_history_across_dates(con: duckdb.DuckDBPyConnection) -> None:
    load(con, [person("DE", "gmail.com"), person("DE", "gmail.com"), person("DE", "x.de")], DAY_2)
    load(con, [person("DE", "gmail.com"), person("DE", "web.de")], DAY_1)
    # A rerun of DAY_1 replaces its history row instead of adding one.
    load(con, [person("DE", "gmail.com"), person("DE", "web.de"), person("DE", "x.de")], DAY_1)
    history = report_history(con)
    assert list(history.columns) == [
        "run_date",
        "german_users",
        "german_gmail_users",
        "gmail_share_pct",
    ]
    assert [d.date() for d in pd.to_datetime(history["run_date"])] == [DAY_1, DAY_2]
    assert history["german_users"].tolist() == [3, 3]
    assert history["german_gmail_users"].tolist() == [1, 2]
    assert history["gmail_share_pct"].tolist() == pytest.approx([33.33, 66.67])


def test_unknown_report_is_rejected(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(KeyError):
        report_rows(con, "delete_batch", DAY_1)
    with pytest.raises(KeyError):
        report_rows(con, "no-such-report", DAY_1)
    # A report's SQL name is no key: keys alone pick a registered declaration.
    with pytest.raises(KeyError):
        report_rows(con, "report_gmail_users_over_60", DAY_1)
    assert list(report_rows(con, "gmail-users-over-60", DAY_1).columns) == ["gmail_users_over_60"]
