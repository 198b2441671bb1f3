"""Tests for tasks.storage.quarantine: a failing batch masked once more, leak-scanned, written."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.common.schemas import MASK, RAW_SCHEMA
from tasks.privacy.leak_scan import LeakScanner
from tasks.storage.quarantine import quarantine
from tests.builders import masked_batch, plant

RUN_DATE = date(2025, 3, 14)
PLANTED = "Zelda.Planted@example.org"
COUNTRIES = [("Germany", "DE"), ("France", "FR"), ("C\u00f4te d\u2019Ivoire", "CI")]
DOMAINS = ["gmail.com", "hotmail.com", "fahey-jerde.example.co.uk"]


def make_raw(n: int) -> pa.Table:
    """A valid masked raw batch of n rows, keyed by real-looking pseudonyms."""
    return masked_batch(
        n,
        RUN_DATE,
        domains=DOMAINS,
        countries=COUNTRIES,
        key=lambda i: hashlib.sha256(f"person-{i}".encode()).hexdigest(),
    )


def test_quarantine_writes_atomically(tmp_path: Path) -> None:
    table = make_raw(10)
    target = quarantine(table, tmp_path, RUN_DATE)
    assert target == tmp_path / "quarantine" / "2025" / "03" / "14" / "persons.parquet"
    # A clean masked batch keeps every value of its vocabularies.
    assert pq.read_table(target).equals(table)
    assert sorted(p.name for p in target.parent.iterdir()) == ["persons.parquet"]
    # A rerun replaces the file.
    again = quarantine(make_raw(5), tmp_path, RUN_DATE)
    assert again == target and pq.read_table(target).num_rows == 5


def test_quarantine_masks_every_column_that_is_not_known_safe(tmp_path: Path) -> None:
    table = plant(plant(make_raw(10), "firstname", 0, "Zelda"), "email", 1, PLANTED)
    table = plant(table, "email", 2, "no-at-sign-Zelda")
    table = plant(table, "gender", 3, "Zelda Planted")  # a full name in a kept field
    table = plant(table, "country", 4, PLANTED)
    table = plant(table, "country_code", 5, "Zelda")
    table = plant(table, "person_key", 6, "Zelda")  # not shaped like a pseudonym
    target = quarantine(table, tmp_path, RUN_DATE)
    assert target is not None
    stored = pq.read_table(target)
    assert stored.schema == RAW_SCHEMA
    assert pc.all(pc.equal(stored["firstname"], MASK)).as_py()
    assert stored["email"][1].as_py() == f"{MASK}@example.org"
    assert stored["email"][2].as_py() == MASK
    assert stored["gender"][3].as_py() == MASK and stored["gender"][2].as_py() == "female"
    assert stored["country"][4].as_py() == MASK and stored["country_code"][5].as_py() == MASK
    assert stored["person_key"][6].as_py() == MASK
    # Ours and typed: kept as they are.
    assert stored["person_key"][7].as_py() == table["person_key"][7].as_py()
    assert stored["age"].equals(table["age"])
    blob = target.read_bytes()
    assert b"Zelda" not in blob and b"Planted" not in blob


def test_quarantine_keeps_a_country_only_where_it_is_its_codes_name(tmp_path: Path) -> None:
    table = plant(make_raw(12), "country", 0, "Atlantis")  # country-shaped, in no vocabulary
    code = table["country_code"][1].as_py()
    other = "Germany" if code != "DE" else "France"
    table = plant(table, "country", 1, other)  # a real country, but not this code's
    target = quarantine(table, tmp_path, RUN_DATE)
    assert target is not None
    stored = pq.read_table(target)
    assert stored["country"][0].as_py() == MASK and stored["country"][1].as_py() == MASK
    assert stored["country"].to_pylist()[2:] == table["country"].to_pylist()[2:]


def test_a_batch_that_still_holds_a_raw_value_is_not_quarantined(tmp_path: Path) -> None:
    # Whatever the masking keeps, the leak scan is the last word: here a raw e-mail of the
    # batch is spelled exactly as a kept, well-formed masked address.
    kept_looking = f"{MASK}@gladyce.example"
    source = pa.table({"email": [kept_looking]})
    table = plant(make_raw(10), "email", 0, kept_looking)
    scanner = LeakScanner(source, RUN_DATE)
    assert quarantine(table, tmp_path, RUN_DATE, scanner=scanner) is None
    assert not (tmp_path / "quarantine").exists()
    assert scanner.report.hit_fields() == ["quarantine batch:email (email)"]
