"""Risk figures, rare-domain collapse, the k-anonymous extract and small-cell suppression."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.common.schemas import AGE_GROUPS
from tasks.privacy.domains import KEEP_DOMAINS, collapse_rare_domains, rare_domains
from tasks.privacy.extract import (
    SHAREABLE_COLUMNS,
    SUPPRESSED,
    Candidate,
    generalized,
    shareable_extract,
)
from tasks.privacy.leak_scan import LeakScanReport
from tasks.privacy.risk import QUASI_IDENTIFIERS, risk_metrics
from tasks.privacy.suppression import small_cell_note, suppress_small_counts
from tasks.reporting.privacy_report import PRIVACY_REPORT_KEY, privacy_markdown, privacy_run_columns
from tasks.reporting.queries import gmail_by_age_group, report_results
from tasks.storage.batches import stage_shareable
from tasks.storage.database import connect, transaction
from tasks.storage.lake import shareable_path, shareable_writer
from tasks.storage.migrations import migrate
from tasks.storage.runs import finish_run, start_run
from tests.builders import analytical_batch
from tests.helpers import committed_batch
from tests.tasks.privacy.privacy_data import RUN_DATE, masked_and_analytical, served, source_table

COUNTRY = {
    "DE": "Germany",
    "FR": "France",
    "TV": "Tuvalu",
    "US": "United States",
    "AQ": "Antarctica",
}


def batch(rows: list[tuple[str, str, str, str]], run_date: dt.date = RUN_DATE) -> pa.Table:
    """An analytical batch from (age_group, gender, country_code, email_domain) tuples."""
    return analytical_batch(
        (
            {
                "gender": gender,
                "age_group": age,
                "email_domain": domain,
                "country": COUNTRY[code],
                "country_code": code,
            }
            for age, gender, code, domain in rows
        ),
        run_date,
        key="k{:05d}".format,
    )


# Three classes on (age_group, gender, country, email_domain) of sizes 3, 2 and 1.
SMALL = batch(
    [("[30-40]", "male", "DE", "gmail.com")] * 3
    + [("[30-40]", "male", "DE", "yahoo.com")] * 2
    + [("[90+]", "female", "TV", "tuvalu.tv")]
)


@pytest.fixture(scope="module")
def analytical_5k() -> pa.Table:
    return masked_and_analytical(source_table(served(5_000)))[1]


@pytest.fixture(scope="module")
def analytical_30k() -> pa.Table:
    return masked_and_analytical(source_table(served(30_000, seed=11)))[1]


# --- risk -----------------------------------------------------------------------------------------


def test_risk_figures_on_a_hand_made_table() -> None:
    m = risk_metrics(SMALL, QUASI_IDENTIFIERS, k=3)
    assert (m.records, m.classes, m.k_min) == (6, 3, 1)
    assert m.records_below_k == 2 + 1  # the class of 2 and the lone record
    assert m.share_below_k == pytest.approx(0.5)
    assert m.prosecutor_risk_max == pytest.approx(1.0)
    # (3 * 1/3 + 2 * 1/2 + 1 * 1/1) / 6
    assert m.prosecutor_risk_avg == pytest.approx(3 / 6)
    # (30-40, male, DE) holds gmail and yahoo; (90+, female, TV) only tuvalu.tv
    assert (m.l_diversity_min, m.l_diversity_avg) == (1, pytest.approx(1.5))

    m2 = risk_metrics(SMALL, QUASI_IDENTIFIERS, k=2)
    assert (m2.records_below_k, m2.share_below_k) == (1, pytest.approx(1 / 6))


def test_risk_on_fewer_quasi_identifiers_and_empty_tables() -> None:
    m = risk_metrics(SMALL, ("gender",), k=5)
    # male 5, female 1
    assert (m.classes, m.k_min, m.records_below_k) == (2, 1, 1)
    assert m.prosecutor_risk_avg == pytest.approx(2 / 6)
    empty = risk_metrics(SMALL.slice(0, 0), QUASI_IDENTIFIERS, k=5)
    assert (empty.records, empty.k_min, empty.prosecutor_risk_max) == (0, 0, 0.0)
    with pytest.raises(ValueError, match="lacks columns"):
        risk_metrics(SMALL, ("nope",), k=5)


def test_risk_metrics_as_run_columns() -> None:
    columns = risk_metrics(SMALL, QUASI_IDENTIFIERS, k=3).as_run_columns()
    assert columns["k_min"] == 1 and columns["records_below_k"] == 3
    assert set(columns) >= {"prosecutor_risk_max", "prosecutor_risk_avg", "l_diversity_min"}


# --- rare domains ---------------------------------------------------------------------------------


def test_rare_domains_collapse_but_free_mail_is_always_kept() -> None:
    table = batch(
        [("[30-40]", "male", "DE", "gmail.com")]  # one user only, still kept
        + [("[30-40]", "male", "DE", "hotmail.com")]
        + [("[30-40]", "male", "DE", "acme.com")] * 5  # k users: kept
        + [("[30-40]", "male", "DE", "tiny.com")] * 4
        + [("[30-40]", "male", "DE", "lone.org")]
        + [("[30-40]", "male", "DE", None)]
    )
    out, collapsed = collapse_rare_domains(table, k=5)
    assert collapsed == 2
    assert Counter(out["email_domain"].to_pylist()) == {
        "gmail.com": 1,
        "hotmail.com": 1,
        "acme.com": 5,
        "other": 5,
        None: 1,
    }
    assert rare_domains(table, 5)[1] == 5  # records that changed
    assert out.schema == table.schema
    # Collapsing again changes nothing; a different keep set is honoured.
    again, collapsed_again = collapse_rare_domains(out, k=5)
    assert collapsed_again == 0 and again.equals(out)
    _, with_keep = collapse_rare_domains(table, 5, keep=frozenset({"lone.org"}))
    assert with_keep == 3  # tiny.com, gmail.com and hotmail.com


def test_reports_answer_the_same_after_the_collapse(tmp_path: Path, analytical_5k) -> None:
    collapsed, domains = collapse_rare_domains(analytical_5k, k=5)
    assert domains > 100  # the batch really has rare company domains
    answers = []
    for name, table in (("before", analytical_5k), ("after", collapsed)):
        with connect(tmp_path / f"{name}.duckdb") as con:
            migrate(con)
            committed_batch(con, table, RUN_DATE, "run-1")
            answers.append((report_results(con, RUN_DATE), gmail_by_age_group(con, RUN_DATE)))
    (before, by_age_before), (after, by_age_after) = answers
    assert before.keys() == after.keys()
    for key in before:
        assert not before[key].empty
        pd.testing.assert_frame_equal(before[key], after[key], check_exact=True)
    pd.testing.assert_frame_equal(by_age_before, by_age_after, check_exact=True)


# --- shareable extract ----------------------------------------------------------------------------


def _classes(table: pa.Table, columns=("age_group", "gender", "region", "email_domain")) -> Counter:
    return Counter(zip(*(table[c].to_pylist() for c in columns), strict=True))


def test_hierarchy_levels() -> None:
    assert generalized(SMALL, "age_group", 1).to_pylist() == ["[20-40]"] * 5 + ["[80+]"]
    assert generalized(SMALL, "country", 1).to_pylist() == ["Western Europe"] * 5 + ["Polynesia"]
    assert generalized(SMALL, "country", 2).to_pylist() == ["Europe"] * 5 + ["Oceania"]
    assert generalized(SMALL, "email_domain", 1).to_pylist()[-3:] == [
        "yahoo.com",
        "yahoo.com",
        "other",
    ]
    assert set(generalized(SMALL, "gender", 1).to_pylist()) == {SUPPRESSED}
    with pytest.raises(ValueError):
        generalized(SMALL, "gender", 2)


def test_age_groups_generalize_to_twenty_year_groups() -> None:
    # Every analytical age group, derived from tasks.common.schemas, against the design's
    # 20-year groups: [90+] has no upper bound, so it joins [80-90] in an open [80+].
    groups = pa.table({"age_group": pa.array([*AGE_GROUPS, None], pa.string())})
    assert generalized(groups, "age_group", 1).to_pylist() == [
        *["[0-20]"] * 2,
        *["[20-40]"] * 2,
        *["[40-60]"] * 2,
        *["[60-80]"] * 2,
        *["[80+]"] * 2,
        None,
    ]


def test_extract_generalizes_one_step_when_that_is_enough() -> None:
    # Ten Germans and one French person, otherwise alike: sub-region (Western Europe) merges
    # them without a single `*`; the country level would have to remove the French record.
    table = batch(
        [("[30-40]", "male", "DE", "gmail.com")] * 10 + [("[30-40]", "male", "FR", "gmail.com")]
    )
    extract = shareable_extract(table, k=2)
    assert extract.steps == {
        "age_group": "10-year groups",
        "gender": "as-is",
        "country": "sub-region (UN M49)",
        "email_domain": "domain (rare ones as other)",
    }
    assert (extract.suppressed_cells, extract.records_removed, extract.k_min) == (0, 0, 11)
    country_level = next(c for c in extract.candidates if c.levels == (0, 0, 0, 0))
    assert country_level.records_removed == 1 and country_level.suppressed_cells == 4
    assert set(extract.table["region"].to_pylist()) == {"Western Europe"}


def violating_batch(analytical: pa.Table) -> pa.Table:
    """A realistic batch plus rare domains and a lone 90+ in a small country (Tuvalu)."""
    extra = batch(
        [("[90+]", "female", "TV", "gmail.com")]
        + [("[40-50]", "male", "US", f"rare{i}.example") for i in range(6)]
        + [("[20-30]", "female", "AQ", "yahoo.com")] * 2,
    )
    return pa.concat_tables([analytical, extra])


def test_extract_reaches_k_with_the_fewest_suppressions(analytical_5k) -> None:
    k = 5
    table = violating_batch(analytical_5k)
    assert risk_metrics(table, QUASI_IDENTIFIERS, k).k_min == 1
    extract = shareable_extract(table, k=k)
    out = extract.table

    assert "person_key" not in out.column_names
    assert tuple(out.column_names) == SHAREABLE_COLUMNS
    assert extract.k_min >= k and min(_classes(out).values()) >= k
    assert extract.metrics.records_below_k == 0
    assert out.num_rows == table.num_rows - extract.records_removed

    # The chosen candidate has the fewest `*` cells of all 72 tried, and ties go to lower levels.
    assert len(extract.candidates) == 3 * 2 * 4 * 3
    best = min(extract.candidates, key=Candidate.rank)
    assert extract.levels == best.levels
    assert best.star_cells == min(c.star_cells for c in extract.candidates)
    assert extract.suppressed_cells == best.suppressed_cells

    # The `*` cells in the output are exactly what was counted (removed rows are gone).
    qi_columns = ("age_group", "gender", "region", "email_domain")
    stars = sum(out[c].to_pylist().count(SUPPRESSED) for c in qi_columns)
    assert stars == best.star_cells - extract.records_removed * len(qi_columns)
    assert sum(extract.suppressed_by_column.values()) <= extract.suppressed_cells

    # Nothing rare survives: no rare domain, no Tuvalu, no identifiable lone 90+.
    domains = set(out["email_domain"].to_pylist())
    assert not {d for d in domains if d.startswith("rare")}
    assert "Tuvalu" not in set(out["region"].to_pylist())
    assert extract.steps_text.count(";") == 3


def test_extract_rows_are_sorted_not_in_source_order(analytical_5k) -> None:
    out = shareable_extract(analytical_5k, k=5).table
    rows = list(zip(*(out[c].to_pylist() for c in SHAREABLE_COLUMNS[1:]), strict=True))
    assert rows == sorted(rows)


def test_extract_of_a_batch_smaller_than_k_removes_everyone() -> None:
    extract = shareable_extract(SMALL, k=10)
    assert extract.table.num_rows == 0 and extract.records_removed == 6
    assert extract.k_min == 0


def test_extract_on_30k_records(analytical_30k) -> None:
    # How long it takes is `make bench`'s (seconds privacy), not a test's.
    extract = shareable_extract(analytical_30k, k=5)
    metrics = risk_metrics(collapse_rare_domains(analytical_30k, 5)[0], QUASI_IDENTIFIERS, 5)
    assert extract.k_min >= 5
    assert metrics.k_min < 5  # the record-level table is not k-anonymous (and is not meant to be)


# --- DuckDB and the lake --------------------------------------------------------------------------


def test_migration_adds_privacy_columns_and_the_shareable_table(tmp_path: Path) -> None:
    with connect(tmp_path / "db.duckdb") as con:
        assert 2 in migrate(con)
        assert migrate(con) == []
        start_run(con, "run-1", RUN_DATE, 11)
        extract = shareable_extract(SMALL, k=2)
        metrics = risk_metrics(SMALL, QUASI_IDENTIFIERS, 2)
        scan = LeakScanReport(outputs_scanned=["a", "b"])
        finish_run(
            con,
            "run-1",
            "completed",
            **privacy_run_columns(metrics, extract, 1, scan, records_collapsed=1),
        )
        row = con.execute(
            "select k_min, extract_k_min, extract_steps, leak_outputs_scanned, leak_hits, "
            "leak_hit_fields, domains_collapsed from pipeline_runs"
        ).fetchone()
        assert row == (1, extract.k_min, extract.steps_text, 2, 0, None, 1)
        columns = [r[0] for r in con.execute("describe persons_shareable").fetchall()]
        assert columns == [*SHAREABLE_COLUMNS, "flow_run_id"]


def staged(
    con: duckdb.DuckDBPyConnection, table: pa.Table, run_date: dt.date, run_id: str | None = None
) -> int:
    """The extract's rows as a run commits them: stage_shareable in one transaction."""
    with transaction(con):
        return stage_shareable(con, table, run_date, run_id)


def test_stage_shareable_replaces_one_date(tmp_path: Path, analytical_5k) -> None:
    extract = shareable_extract(analytical_5k, k=5)
    other_day = RUN_DATE + dt.timedelta(days=1)
    with connect(tmp_path / "db.duckdb") as con:
        migrate(con)
        assert staged(con, extract.table, RUN_DATE, "run-1") == extract.table.num_rows
        assert staged(con, extract.table, RUN_DATE, "run-2") == extract.table.num_rows
        assert staged(con, extract.table.slice(0, 10), other_day) == 10
        counts = dict(
            con.execute("select run_date, count(*) from persons_shareable group by all").fetchall()
        )
        assert counts == {RUN_DATE: extract.table.num_rows, other_day: 10}
        # The table's k_min per date, recomputed in SQL, is what the extract reported.
        k_min = con.execute(
            "select min(n) from (select count(*) as n from persons_shareable where run_date = $d "
            "group by age_group, gender, region, email_domain)",
            {"d": RUN_DATE},
        ).fetchone()[0]
        assert k_min == extract.k_min
        with pytest.raises(ValueError, match="person_key"):
            staged(con, analytical_5k, RUN_DATE)


def test_stage_shareable_rolls_back_on_error(tmp_path: Path) -> None:
    extract = shareable_extract(SMALL, k=2)
    with connect(tmp_path / "db.duckdb") as con:
        migrate(con)
        staged(con, extract.table, RUN_DATE)
        with pytest.raises(duckdb.Error):
            staged(con, extract.table.drop_columns(["region"]), RUN_DATE)
        rows = con.execute("select count(*) from persons_shareable").fetchone()[0]
        assert rows == extract.table.num_rows == 5  # the lone (90+, TV) record is removed


def test_shareable_writer_parquet(tmp_path: Path) -> None:
    extract = shareable_extract(SMALL, k=2)
    path = shareable_writer(extract.table, tmp_path / "lake", RUN_DATE, {"k": "2"}).commit()
    assert path == tmp_path / "lake" / "shareable" / "2026" / "03" / "01" / "persons.parquet"
    assert path == shareable_path(tmp_path / "lake", RUN_DATE)
    assert pq.read_table(path).equals(extract.table.replace_schema_metadata({"k": "2"}))
    with pytest.raises(ValueError, match="person_key"):
        shareable_writer(SMALL, tmp_path / "lake", RUN_DATE)


# --- small cells ----------------------------------------------------------------------------------


def test_suppress_small_counts() -> None:
    df = pd.DataFrame(
        {
            "country": ["A", "B", "C", "D", "E"],
            "users": [0, 1, 4, 5, 120],
            "gmail": [0, 1, 2, 5, 3],
            "pct": [None, 100.0, 50.0, 100.0, 2.5],
        }
    )
    out = suppress_small_counts(df, ["users", "gmail"], k=5, derived={"pct": ["users", "gmail"]})
    assert out["users"].tolist() == [0, "<5", "<5", 5, 120]
    assert out["gmail"].tolist() == [0, "<5", "<5", 5, "<5"]
    assert out["pct"].tolist()[1:] == ["<5", "<5", 100.0, "<5"]
    assert out["country"].tolist() == df["country"].tolist()
    assert df["users"].tolist() == [0, 1, 4, 5, 120]  # the input is untouched
    # Nothing small: the dtype stays numeric.
    assert suppress_small_counts(df.iloc[[0, 3]], ["users"], 5)["users"].dtype.kind == "i"
    assert "<5" in small_cell_note(5) and "DuckDB" in small_cell_note(5)


# --- the privacy artifact -------------------------------------------------------------------------


def test_privacy_markdown_has_figures_and_no_values(analytical_5k) -> None:
    table = violating_batch(analytical_5k)
    collapsed_table, collapsed = collapse_rare_domains(table, 5)
    metrics = risk_metrics(collapsed_table, QUASI_IDENTIFIERS, 5)
    extract = shareable_extract(table, 5)
    scan = LeakScanReport(outputs_scanned=["raw-parquet", "duckdb:persons_anonymized"])
    markdown = privacy_markdown(metrics, extract, collapsed, scan, RUN_DATE, records_collapsed=9)
    assert PRIVACY_REPORT_KEY == "privacy-report"
    assert "# Privacy report, 2026-03-01" in markdown
    assert f"| k_min (smallest class) | {metrics.k_min:,} | {extract.k_min:,} |" in markdown
    assert f"{collapsed:,} email domains" in markdown and "(9 records)" in markdown
    for level in extract.steps.values():
        assert level in markdown
    assert "**Outputs scanned:** 2 · **Hits:** 0" in markdown
    # Rare domains are values of the batch: never named.
    assert "rare0.example" not in markdown and "Tuvalu" not in markdown
    assert not (set(KEEP_DOMAINS) - {"gmail.com", "hotmail.com", "yahoo.com"})
