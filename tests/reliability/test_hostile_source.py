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

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from local_api.server import LocalApiServer
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
    return [r["address"]["country"] for r in records if "@" in r["address"]["country"]]


def _planted_genders(records: list[dict]) -> list[str]:
    return [r["gender"] for r in records if r["gender"] not in ("male", "female")]


def _planted_coordinates(records: list[dict]) -> list[str]:
    return [str(r["address"][f]) for r in records for f in ("latitude", "longitude")]


def _planted_keys(records: list[dict]) -> list[str]:
    return [key for r in records for key in r if "@" in key]


@dataclasses.dataclass(frozen=True)
class Drill:
    """One hostile fault, the stage it stops the run in, and how to find its planted values."""

    name: str
    faults: dict
    failed_stage: str
    error: str
    planted: Callable[[list[dict]], list[str]] | None = None
    quarantined: bool = False


DRILLS = [
    Drill(
        "e-mail in country",
        {"drift": ("email-in-country",)},
        "verify",
        "LeakError: leak scan",
        _planted_countries,
    ),
    Drill(
        "full name in gender",
        {"drift": ("name-in-gender",)},
        "validate",
        "ValidationError: masked_persons",
        _planted_genders,
        quarantined=True,
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
