"""The leak scan: planted raw values are found in every kind of output, clean outputs pass."""

from __future__ import annotations

import copy
import datetime as dt
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tasks.ingest.source_schema import to_source_table
from tasks.privacy.domains import collapse_rare_domains
from tasks.privacy.extract import shareable_extract
from tasks.privacy.leak_scan import (
    PATTERN_EMAIL,
    PATTERN_PHONE,
    Hit,
    LeakError,
    LeakScanner,
    LeakScanReport,
    secret_hashes,
)
from tasks.privacy.risk import QUASI_IDENTIFIERS, risk_metrics
from tasks.reporting.artifacts import report_markdown, report_records
from tasks.reporting.privacy_report import privacy_markdown, privacy_run_columns
from tasks.reporting.queries import report_results
from tasks.storage.batches import stage_shareable
from tasks.storage.database import connect, transaction
from tasks.storage.lake import shareable_writer, write_table
from tasks.storage.migrations import migrate
from tasks.storage.runs import finish_run, start_run
from tests.helpers import committed_batch
from tests.tasks.privacy.privacy_data import RUN_DATE, masked_and_analytical, served, source_table

# A person whose every value is distinctive, appended to the batch and planted in outputs.
PLANTED = {
    "id": 1,
    "firstname": "Zebediah",
    "lastname": "Quarterman",
    "email": "zeb.quarterman77@quartz-mail.com",
    "phone": "+15550001234",
    "birthday": "1950-07-14",
    "gender": "male",
    "address": {
        "id": 1,
        "street": "12 Quarterman Lane Apt. 5",
        "streetName": "Quarterman Lane",
        "buildingNumber": "12",
        "city": "Port Zebediah",
        "zipcode": "99123-4567",
        "country": "Marshall Islands",
        "country_code": "MH",
        "latitude": 12.345678,
        "longitude": -98.765432,
    },
    "website": "http://quartz-mail.com",
    "image": "http://placeimg.com/640/480/people",
}
VALUES = ("Zebediah", "Quarterman", "zeb.quarterman77", "+15550001234", "1950-07-14", "99123")

LOG_LINES = [
    "run date 2026-03-01: 3001 records in 4 pages of <= 1000, 4 fetch tasks, from http://127.0.0.1:8080/api/v2",
    "pages 4/4 done (3001 records, 0 retries so far)",
    "Finished in state Completed()",
    "loaded 3001 records for 2026-03-01; lake file /tmp/lake/raw/2026/03/01/persons.parquet; 2.1s",
]


@pytest.fixture(scope="module")
def batch() -> dict:
    records = [*served(3_000, seed=5), copy.deepcopy(PLANTED)]
    source = source_table(records)
    masked, analytical = masked_and_analytical(source)
    return {"records": records, "source": source, "masked": masked, "analytical": analytical}


@pytest.fixture
def scanner(batch: dict) -> LeakScanner:
    return LeakScanner(batch["source"], RUN_DATE)


def _assert_no_values(text: str) -> None:
    for value in VALUES:
        assert value not in text


def _write_outputs(batch: dict, tmp_path: Path) -> dict:
    """Everything a run writes, built by the pipeline's own functions, on tmp_path."""
    lake = tmp_path / "lake"
    raw = write_table(batch["masked"], lake / "raw" / "persons.parquet", {"run_date": "2026-03-01"})
    extract = shareable_extract(batch["analytical"], 5)
    shareable = shareable_writer(extract.table, lake, RUN_DATE).commit()
    db = tmp_path / "db.duckdb"
    collapsed, domains = collapse_rare_domains(batch["analytical"], 5)
    metrics = risk_metrics(collapsed, QUASI_IDENTIFIERS, 5)
    with connect(db) as con:
        migrate(con)
        start_run(con, "run-1", RUN_DATE, 3001)
        committed_batch(con, collapsed, RUN_DATE, "run-1")
        with transaction(con):
            stage_shareable(con, extract.table, RUN_DATE, "run-1")
        finish_run(con, "run-1", "completed", **privacy_run_columns(metrics, extract, domains))
        reports = report_results(con, RUN_DATE)
    markdown = report_markdown(RUN_DATE, 3001, reports, {})
    tables = {key: report_records(key, reports[key]) for key in reports}
    privacy = privacy_markdown(metrics, extract, domains, LeakScanReport(), RUN_DATE)
    return {
        "raw": raw,
        "shareable": shareable,
        "db": db,
        "markdown": markdown,
        "tables": tables,
        "privacy": privacy,
    }


def _scan_all(scanner: LeakScanner, outputs: dict) -> LeakScanReport:
    scanner.scan_parquet(outputs["raw"], "raw-parquet")
    scanner.scan_parquet(outputs["shareable"], "shareable-parquet")
    scanner.scan_duckdb(outputs["db"], run_date=RUN_DATE)
    scanner.scan_text("artifact:user-metrics-report", outputs["markdown"], field="markdown")
    scanner.scan_text("artifact:privacy-report", outputs["privacy"], field="markdown")
    for key, rows in outputs["tables"].items():
        scanner.scan_rows(f"artifact:{key}", rows)
    scanner.scan_lines("flow-run-logs", LOG_LINES)
    return scanner.report


def test_a_clean_run_has_no_hits(batch: dict, scanner: LeakScanner, tmp_path: Path) -> None:
    report = _scan_all(scanner, _write_outputs(batch, tmp_path))
    assert report.hits == [], report.hit_fields()
    assert report.clean
    assert len(report.outputs_scanned) >= 15  # two Parquet files, every DuckDB table, artifacts
    assert "duckdb:persons_shareable" in report.outputs_scanned
    report.raise_if_leaked()
    assert report.as_run_columns() == {
        "leak_outputs_scanned": len(report.outputs_scanned),
        "leak_hits": 0,
        "leak_hit_fields": None,
    }


def test_planted_value_in_parquet(batch: dict, scanner: LeakScanner, tmp_path: Path) -> None:
    masked = batch["masked"]
    column = masked["firstname"].to_pylist()
    column[17] = "Zebediah"
    leaked = masked.set_column(
        masked.schema.get_field_index("firstname"), "firstname", pa.array(column)
    )
    path = write_table(leaked, tmp_path / "raw.parquet")
    hits = scanner.scan_parquet(path, "raw-parquet")
    assert hits == [Hit("raw-parquet", "firstname", 1, "firstname")]
    with pytest.raises(LeakError) as failure:
        scanner.report.raise_if_leaked()
    assert "raw-parquet:firstname (firstname)" in str(failure.value)
    _assert_no_values(str(failure.value) + repr(hits))


def test_planted_value_in_parquet_metadata(
    batch: dict, scanner: LeakScanner, tmp_path: Path
) -> None:
    path = write_table(batch["masked"], tmp_path / "raw.parquet", {"note": "born 1950-07-14"})
    assert scanner.scan_parquet(path, "raw") == [Hit("raw", "metadata", 1, "birthday")]


def test_planted_values_in_duckdb(batch: dict, scanner: LeakScanner, tmp_path: Path) -> None:
    db = tmp_path / "db.duckdb"
    with connect(db) as con:
        migrate(con)
        start_run(con, "run-1", RUN_DATE, 1)
        committed_batch(con, batch["analytical"], RUN_DATE, "run-1")
        # A surname as a whole cell, and a street inside an error message.
        con.execute(
            "update persons_anonymized set country = 'Quarterman' where person_key = "
            "(select min(person_key) from persons_anonymized)"
        )
        finish_run(con, "run-1", "failed", error="ValueError: row 12 Quarterman Lane Apt. 5 bad")
    hits = scanner.scan_duckdb(db, run_date=RUN_DATE)
    assert Hit("duckdb:persons_anonymized", "country", 1, "lastname") in hits
    assert Hit("duckdb:pipeline_runs", "error", 1, "street") in hits
    assert {h.output for h in hits} == {"duckdb:persons_anonymized", "duckdb:pipeline_runs"}
    _assert_no_values(repr(hits) + ", ".join(scanner.report.hit_fields()))


def test_planted_value_in_artifacts(batch: dict, scanner: LeakScanner, tmp_path: Path) -> None:
    outputs = _write_outputs(batch, tmp_path)
    markdown = outputs["markdown"] + "\n| contact | ZEB.Quarterman77@quartz-mail.com |\n"
    hits = scanner.scan_text("artifact:user-metrics-report", markdown, field="markdown")
    kinds = {h.kind for h in hits}
    assert kinds == {"email", PATTERN_EMAIL}  # case does not hide an address
    rows = [*outputs["tables"]["top-gmail-countries"], {"rank": 9, "country": "Zebediah"}]
    assert scanner.scan_rows("artifact:top-gmail-countries", rows) == [
        Hit("artifact:top-gmail-countries", "country", 1, "firstname")
    ]


def test_planted_value_in_log_lines(scanner: LeakScanner) -> None:
    lines = [*LOG_LINES, "page 3 failed for +15550001234", "retrying Port Zebediah"]
    hits = scanner.scan_lines("flow-run-logs", lines)
    assert {(h.field, h.kind, h.count) for h in hits} == {
        ("message", "phone", 1),
        ("message", PATTERN_PHONE, 1),
        ("message", "city", 1),
        ("message", "firstname", 1),  # "Zebediah" inside the city's name
    }
    report = scanner.report
    assert report.as_run_columns()["leak_hits"] == 4
    assert "flow-run-logs:message (phone)" in report.as_run_columns()["leak_hit_fields"]


def test_patterns_need_no_batch_and_skip_masked_values(scanner: LeakScanner) -> None:
    assert {h.kind for h in scanner.scan_text("t", "mail john.doe@example.org now")} == {
        PATTERN_EMAIL
    }
    assert scanner.scan_text("t", "masked ****@gmail.com and ****") == []
    assert {h.kind for h in scanner.scan_text("t", "call +4915112345678")} == {PATTERN_PHONE}
    # Base64 images are pixels: a digit run after "+" there is chance, not a phone.
    image = "![chart](data:image/png;base64,iVBORw0KGgo+12345678901AAAA==)"
    assert scanner.scan_text("t", image) == []
    table = pa.table({"email": ["****@gmail.com", "a.b@c.io", None], "n": [1, 2, 3]})
    assert scanner.scan_table("t", table) == [Hit("t", "email", 1, PATTERN_EMAIL)]


def test_kept_values_and_short_numbers_are_not_leaks(scanner: LeakScanner) -> None:
    # The batch has a person in the Marshall Islands and a zipcode 99123-4567; kept values,
    # their words, and numbers too short to tell apart from counts never hit.
    text = "Marshall Islands: 99123 records, 12 pages, male, quartz-mail.com, 2026-03-01, MH"
    assert scanner.scan_text("t", text) == []
    table = pa.table({"country": ["Marshall Islands"], "domain": ["quartz-mail.com"]})
    assert scanner.scan_table("t", table) == []


def test_surname_equal_to_a_kept_country_is_not_a_leak() -> None:
    jordan = copy.deepcopy(PLANTED)
    jordan["firstname"] = "Jordan"
    jordan["address"] = {**jordan["address"], "country": "Jordan", "country_code": "JO"}
    table, _ = to_source_table([jordan], 0)
    scanner = LeakScanner(table, RUN_DATE)
    assert scanner.scan_table("t", pa.table({"country": ["Jordan"]})) == []
    assert scanner.scan_text("t", "Top country: Jordan") == []


def test_scan_of_30k_records_is_clean_and_holds_every_email() -> None:
    # How long this takes is a benchmark figure (`make bench`: seconds leak_scan), not a test.
    records = served(30_000, seed=11)
    source = source_table(records)
    masked, analytical = masked_and_analytical(source)
    extract = shareable_extract(analytical, 5)
    scanner = LeakScanner(source, RUN_DATE)
    scanner.scan_table("raw", masked)
    scanner.scan_table("analytical", analytical)
    scanner.scan_table("shareable", extract.table)
    scanner.scan_lines("logs", LOG_LINES)
    assert scanner.report.clean, scanner.report.hit_fields()
    # Every email of the batch is held (lower-cased) and would be found.
    emails = pc.utf8_lower(source["email"])
    found = scanner.scan_table("emails", pa.table({"e": emails}))
    assert {h.kind: h.count for h in found}["email"] == 30_000


def test_no_false_positives_from_kept_words_counts_or_timestamps() -> None:
    """Seen at 1,000,000 records: a local part equal to a country, a zipcode equal to a count,
    a longitude equal to a timestamp's text. None of those is a leak."""
    rec = {
        "firstname": "Maximilian",
        "lastname": "Oberhausen",
        "email": "jordan@example.org",
        "phone": "+12025550123",
        "birthday": "1970-01-01",
        "gender": "male",
        "address": {
            "street": "1 Long Road",
            "streetName": "Long Road",
            "buildingNumber": "1",
            "city": "Springfield",
            "zipcode": "26534",
            "country": "Jordan",
            "country_code": "JO",
            "latitude": 12.5,
            "longitude": 2026.0,
        },
        "website": "http://example.org",
        "image": "http://placeimg.com/640/480/people",
    }
    table, _ = to_source_table([rec], 0)
    scanner = LeakScanner(table, RUN_DATE)
    assert scanner.scan_table("countries", pa.table({"country": ["Jordan", "jordan"]})) == []
    assert scanner.scan_rows("counts", [{"gmail_users_over_60": 26534}]) == []
    assert scanner.scan_rows("text", [{"note": "26534"}]) != []  # a string still counts
    stamps = pa.table({"started_at": pa.array([dt.datetime(2026, 1, 1)], pa.timestamp("us"))})
    assert scanner.scan_table("timestamps", stamps) == []
    birthdays = pa.table({"born": pa.array([dt.date(1970, 1, 1)], pa.date32())})
    assert scanner.scan_table("dates", birthdays) != []  # dates are still scanned


def test_scanner_built_from_ranges_equals_one_built_from_the_batch(batch: dict) -> None:
    source = batch["source"]
    # The planted person (last row) and a "Jordan" surname sit in one range, the country
    # "Jordan" in another: kept values are only known once every range is merged.
    jordan = copy.deepcopy(PLANTED)
    jordan["firstname"], jordan["lastname"] = "Jordanna", "Jordan"
    country = copy.deepcopy(served(1, seed=9)[0])
    country["address"] = {**country["address"], "country": "Jordan", "country_code": "JO"}
    extra = source_table([jordan, country])
    parts = [
        secret_hashes(source.slice(0, 1_000)),
        secret_hashes(pa.concat_tables([source.slice(1_000), extra.slice(0, 1)])),
        secret_hashes(extra.slice(1)),
    ]
    whole = LeakScanner(pa.concat_tables([source, extra]), RUN_DATE)
    ranged = LeakScanner(parts, RUN_DATE)
    assert ranged.secrets == whole.secrets
    table = pa.table({"name": ["Zebediah", "Quarterman", "Jordan", "Jordanna", "zeb.quarterman77"]})
    assert ranged.scan_table("t", table) == whole.scan_table("t", table) != []
    # "Jordan" is a kept country once all ranges are merged; the other four are the planted ones.
    kinds = {h.kind: h.count for h in ranged.scan_table("t", table)}
    assert kinds == {"firstname": 2, "lastname": 1, "email_local": 1}
    text = "Top country: Jordan. Zebediah Quarterman wrote from zeb.quarterman77@quartz-mail.com"
    assert ranged.scan_text("t", text) == whole.scan_text("t", text)
    assert {h.kind for h in ranged.scan_text("t", text)} >= {"firstname", "lastname", "email"}


def test_secret_hashes_hold_no_raw_value(batch: dict) -> None:
    """They travel from the mask task to the flow (and across processes on Dask)."""
    part = secret_hashes(batch["source"])
    blob = pickle.dumps(part)
    for value in (*VALUES, "quartz-mail.com" + "x", "Port Zebediah", "12 Quarterman Lane"):
        assert value.encode() not in blob
    # Nothing of the batch travels as text, not even its countries: what outputs keep on purpose
    # comes from the vocabularies, never from the batch.
    assert b"Marshall Islands" not in blob and not hasattr(part, "kept")
    # 8 bytes per distinct value and form (cell, lower-cased cell, text): no strings.
    assert part.nbytes == 8 * (len(part.cells) + len(part.lower) + len(part.text))


def test_a_value_is_kept_for_its_vocabulary_never_because_the_batch_carries_it() -> None:
    """A person's name sent as their country is a leak in the country column, while a real
    country that equals a surname ("Jordan") is not."""
    person = copy.deepcopy(PLANTED)
    person["address"] = {**person["address"], "country": "Zebediah Quarterman"}
    jordan = copy.deepcopy(served(1, seed=9)[0])
    jordan["lastname"] = "Jordan"
    scanner = LeakScanner(source_table([person, jordan]), RUN_DATE)
    table = pa.table({"country": ["Zebediah Quarterman", "Jordan", "Germany"]})
    hits = {(h.field, h.kind, h.count) for h in scanner.scan_table("t", table)}
    assert hits == {("country", "firstname", 1), ("country", "lastname", 1)}
    # In free text the name's words are found too, a kept country's are not.
    assert {h.kind for h in scanner.scan_text("log", "top: Zebediah Quarterman")} == {
        "firstname",
        "lastname",
    }
    assert not scanner.scan_text("log", "top country: Jordan")


def test_text_is_scanned_as_a_reader_sees_it(scanner: LeakScanner) -> None:
    """Escapes for the UI (backslashes, entities, invisible joiners) and zero-width characters
    neither hide a raw value nor the e-mail pattern."""
    hidden = [
        "wrote zeb\\.quarterman77@quartz\\-mail.com",
        "wrote zeb.quarterman77@\u2060quartz-mail.com",
        "wrote zeb.quarterman77\u200b@quartz-mail.com",
        "name: Zebe\u00addiah &amp; Quarter\u200bman",
    ]
    for text in hidden:
        kinds = {h.kind for h in scanner.scan_text("artifact", text)}
        assert kinds & {"email", "firstname", "lastname"}, (text, kinds)
    assert "pattern:email" in {h.kind for h in scanner.scan_text("a", hidden[1])}
