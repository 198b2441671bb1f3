"""A hostile source: values in the wrong fields, odd types, e-mail addresses as keys, personal
data in error bodies. Every failure path must hold no source value.

Each drill loads the date cleanly, runs the CLI (in this process, so the Prefect harness and
the terminal output are at hand) against a local API serving one hostile fault, then scans the
lake, DuckDB, the Prefect database, the run's logs and artifacts and the terminal output for the
planted values; then a clean rerun of the date must succeed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

import duckdb
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from local_api.countries import COUNTRY_NAMES
from local_api.faults import DRIFTS, MARKUP_COUNTRY
from local_api.server import LocalApiServer
from tasks.common.vocabulary import GENDERS, country_pairs
from tests.helpers import duckdb_cells, leaked, parquet_cells, raw_values, served_records
from tests.reliability.conftest import Restored, error_lines
from tests.reliability.drills import (
    latest_run_id,
    places_holding,
    run_outputs,
    run_row,
    stored_date,
    zone_file,
)

RUN_DATE = dt.date(2026, 10, 12)
RECORDS = 300
SEED = 17
BASELINE = {"run_date": RUN_DATE, "records": RECORDS, "page_size": 100, "seed": SEED}
ERROR_MESSAGE = "Server Error for dana.hostile@example.net, call +4915112345678"


def _planted_countries(records: list[dict]) -> list[str]:
    """Countries the server served that are no country it knows (the person's own data)."""
    known = set(COUNTRY_NAMES)
    return [r["address"]["country"] for r in records if r["address"]["country"] not in known]


def _planted_genders(records: list[dict]) -> list[str]:
    return [r["gender"] for r in records if r["gender"] not in ("male", "female")]


def _planted_coordinates(records: list[dict]) -> list[str]:
    return [str(r["address"][f]) for r in records for f in ("latitude", "longitude")]


def _planted_keys(records: list[dict]) -> list[str]:
    return [key for r in records for key in r if "@" in key]


@dataclasses.dataclass(frozen=True)
class Drill:
    """One hostile fault, the step it stops the run in, and how to find its planted values."""

    name: str
    faults: dict
    failed_stage: str
    error: str
    planted: Callable[[list[dict]], list[str]] | None = None
    quarantined: bool = False
    mentions: str = ""  # a field the error line names


# A person's own data as their country (the code left valid), and markup as a country: each
# is refused before masking, naming the field and the rule, and written nowhere.
_COUNTRY_DRIFTS = tuple(d for d in DRIFTS if d.endswith("-in-country") and d != "markup-in-country")

DRILLS = [
    *(
        Drill(
            drift.removesuffix("-in-country").replace("-", " ") + " in country",
            {"drift": (drift,)},
            "fetch",
            "VocabularyError: page",
            _planted_countries,
            mentions="country",
        )
        for drift in _COUNTRY_DRIFTS
    ),
    Drill(
        "markup in country",
        {"drift": ("markup-in-country",)},
        "fetch",
        "VocabularyError: page",
        lambda records: [MARKUP_COUNTRY, "evil.example", "javascript:alert"],
        mentions="country_code",
    ),
    Drill(
        "full name in gender",
        {"drift": ("name-in-gender",)},
        "fetch",
        "VocabularyError: page",
        _planted_genders,
        mentions="gender",
    ),
    Drill(
        "integer coordinates",
        {"drift": ("int-coordinates",)},
        "fetch",
        "SchemaDriftError: page 0: field 'address.latitude' has values that do not convert",
        _planted_coordinates,
    ),
    Drill(
        "e-mail addresses as keys",
        {"drift": ("email-keys",)},
        "fetch",
        "SchemaDriftError: page 0: field 'email' is missing from the source (1 unexpected",
        _planted_keys,
    ),
    Drill(
        "personal data in an error body",
        {"down": True, "error_message": ERROR_MESSAGE},
        "fetch",
        "FetchError: page",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("drill", DRILLS, ids=[d.name for d in DRILLS])
def test_hostile_source(
    drill: Drill,
    start_api: Callable[..., LocalApiServer],
    reliability_env,
    restored: Restored,
    capfd: pytest.CaptureFixture[str],
) -> None:
    lake, db, before = restored.lake, restored.db, restored.before
    reliability_env(RETRY_MAX_ATTEMPTS="2")
    api = start_api(**drill.faults)
    args = ["--api-url", api.base_url, "--records", str(RECORDS), "--page-size", "100"]
    args += ["--seed", str(SEED + 1), "--run-date", RUN_DATE.isoformat()]
    capfd.readouterr()
    code = main(args)
    out, err = capfd.readouterr()
    served, planted = [], ["dana.hostile@example.net", "+4915112345678", ERROR_MESSAGE]
    if drill.planted is not None:
        served = served_records(api)
        planted = drill.planted(served)
        assert planted, f"{drill.name}: the hostile server planted nothing"
    assert code == 1, out + err
    (line,) = error_lines(err)
    assert line.startswith(f"error: {drill.error}"), line
    assert f" {drill.mentions} " in line if drill.mentions else True, line

    run_id = latest_run_id(db)
    row = run_row(db, run_id)
    assert (row["status"], row["failed_stage"]) == ("failed", drill.failed_stage), row
    after = stored_date(lake, db, RUN_DATE)
    assert (after.raw, after.extract, after.tables) == (before.raw, before.extract, before.tables)
    quarantine = zone_file(lake, "quarantine", RUN_DATE)
    assert quarantine.exists() == drill.quarantined
    if drill.quarantined:
        # Quarantined, but only what validation needs to show: the names became masks.
        assert pq.read_table(quarantine).num_rows == RECORDS

    assert not places_holding(planted, lake, db, run_outputs(run_id, out, err))
    if served and all("email" in r for r in served):
        # Nor any other raw value of the batch, as a whole cell of the lake or DuckDB.
        secrets = raw_values(served, RUN_DATE)
        assert not leaked(secrets, parquet_cells(lake) | duckdb_cells(db))

    # A clean rerun of the date succeeds, and takes the stale quarantine file with it.
    clean = start_api()
    args[1] = clean.base_url
    assert main(args) == 0, capfd.readouterr()
    assert not quarantine.exists()
    assert stored_date(lake, db, RUN_DATE).runs("persons_anonymized") == {latest_run_id(db)}


def _planted_domains(records: list[dict]) -> list[str]:
    """The domains (and moved local parts) of e-mails no one else shares: `gmail.com@kevin35`'s
    `kevin35`, a name such as `claire.dawson.example`, a vanity `johnsmith.com`."""
    domains = [r["email"].rpartition("@")[2] for r in records]
    once = [d for d in domains if domains.count(d) == 1]
    return [f"@{d}" for d in once] + [d for d in once if "." in d]


@pytest.mark.slow
@pytest.mark.parametrize("drift", ["local-at-domain", "vanity-domain"])
def test_a_domain_no_one_shares_is_kept_nowhere(
    drift: str,
    start_api: Callable[..., LocalApiServer],
    reliability_env,
    restored: Restored,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """An e-mail domain is kept only where k persons share it (or it is a public provider):
    the run completes, and a domain that is free text or a person's names is stored as `other`
    in every layer."""
    lake, db = restored.lake, restored.db
    api = start_api(drift=(drift,))
    args = ["--api-url", api.base_url, "--records", str(RECORDS), "--page-size", "100"]
    args += ["--seed", str(SEED + 2), "--run-date", RUN_DATE.isoformat()]
    capfd.readouterr()
    code = main(args)
    out, err = capfd.readouterr()
    assert code == 0, out + err
    served = served_records(api)
    planted = _planted_domains(served)
    assert len(planted) >= RECORDS // 10, planted
    run_id = latest_run_id(db)
    assert not places_holding(planted, lake, db, run_outputs(run_id, out, err))
    # What the layers keep: public providers, shared host names, `other`, and nothing else.
    raw = pq.read_table(zone_file(lake, "raw", RUN_DATE), columns=["email"])["email"]
    raw_domains = {e.rpartition("@")[2] for e in raw.to_pylist()}
    with duckdb.connect(str(db), read_only=True) as con:
        table_domains = {
            d
            for (d,) in con.execute(
                "select distinct email_domain from persons_anonymized where run_date = ?",
                [RUN_DATE],
            ).fetchall()
        }
        # No table holds a kept value outside its vocabulary.
        pairs = set(
            con.execute(
                "select distinct country_code, country from persons_anonymized where run_date = ?",
                [RUN_DATE],
            ).fetchall()
        )
        genders = {
            g for (g,) in con.execute("select distinct gender from persons_anonymized").fetchall()
        }
        reported = {
            c
            for (c,) in con.execute(
                "select country from report_top_gmail_countries where run_date = ?", [RUN_DATE]
            ).fetchall()
        }
    assert pairs <= country_pairs() and genders <= set(GENDERS)
    assert reported and reported <= {name for _, name in country_pairs()}
    assert raw_domains == table_domains
    served_domains = [r["email"].rpartition("@")[2].lower() for r in served]
    for domain in table_domains - {"other", "gmail.com", "hotmail.com", "yahoo.com"}:
        assert served_domains.count(domain) >= 5, domain  # PRIVACY_K's default
    assert "other" in table_domains
