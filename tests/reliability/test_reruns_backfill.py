"""Reruns replace a date exactly; backfills run a range as one batch per date, skipping loaded."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.user_metrics import user_metrics_pipeline
from local_api.server import LocalApiServer
from tasks.common.inputs import RunOptions
from tests.reliability.conftest import Site, db_query, error_lines, lake_file, run_cli, snapshot

DAYS = [dt.date(2026, 6, 1), dt.date(2026, 6, 2), dt.date(2026, 6, 3)]


def batches(db: Path) -> list[tuple]:
    """(run_date, rows, distinct flow runs) per stored date."""
    return db_query(
        db,
        "select run_date, count(*), count(distinct flow_run_id) from persons_anonymized"
        " group by run_date order by run_date",
    )


def completed_runs(db: Path) -> list[tuple]:
    """(run_date, flow_run_id) of every completed run, in start order."""
    return db_query(
        db,
        "select run_date, flow_run_id from pipeline_runs where status = 'completed'"
        " order by started_at",
    )


def test_rerun_replaces_the_date_exactly(api: LocalApiServer, site: Site) -> None:
    lake, db = site.lake, site.db
    day = DAYS[0]
    user_metrics_pipeline(api_url=api.base_url, records=400, page_size=100, run_date=day)
    second = user_metrics_pipeline(api_url=api.base_url, records=250, page_size=100, run_date=day)
    state = snapshot(lake, db, day)
    assert batches(db) == [(day, 250, 1)]
    assert state.flow_run_ids == {second["flow_run_id"]}
    assert pq.read_table(lake_file(lake, day)).num_rows == 250
    # Report rows follow the batch: one set, from the rerun.
    assert [r[-1] for r in state.reports] == [second["flow_run_id"]]


def test_backfill_loads_skips_and_forces(api: LocalApiServer, site: Site) -> None:
    from flows.user_metrics import user_metrics_backfill

    lake, db = site.lake, site.db
    kwargs = {"options": RunOptions(api_url=api.base_url, records=200, page_size=100)}
    first = user_metrics_backfill(start_date=DAYS[0], end_date=DAYS[-1], **kwargs)
    assert first == {d.isoformat(): "loaded" for d in DAYS}
    assert batches(db) == [(d, 200, 1) for d in DAYS]
    runs = completed_runs(db)
    assert sorted(d for d, _ in runs) == DAYS  # each date its own flow run
    states = {d: snapshot(lake, db, d) for d in DAYS}

    again = user_metrics_backfill(start_date=DAYS[0], end_date=DAYS[-1], **kwargs)
    assert again == {d.isoformat(): "skipped" for d in DAYS}
    assert completed_runs(db) == runs, "a skipped date ran again"
    assert {d: snapshot(lake, db, d) for d in DAYS} == states

    forced = user_metrics_backfill(start_date=DAYS[0], end_date=DAYS[-1], force=True, **kwargs)
    assert forced == {d.isoformat(): "loaded" for d in DAYS}
    assert batches(db) == [(d, 200, 1) for d in DAYS]
    new_runs = completed_runs(db)[len(runs) :]
    assert sorted(d for d, _ in new_runs) == DAYS
    for day, run_id in new_runs:
        assert snapshot(lake, db, day).flow_run_ids == {run_id}


def test_backfill_fills_only_the_gaps(api: LocalApiServer, site: Site) -> None:
    from flows.user_metrics import user_metrics_backfill

    db = site.db
    user_metrics_pipeline(api_url=api.base_url, records=200, page_size=100, run_date=DAYS[1])
    options = RunOptions(api_url=api.base_url, records=200, page_size=100)
    outcome = user_metrics_backfill(start_date=DAYS[0], end_date=DAYS[-1], options=options)
    assert outcome == {
        DAYS[0].isoformat(): "loaded",
        DAYS[1].isoformat(): "skipped",
        DAYS[2].isoformat(): "loaded",
    }
    assert batches(db) == [(d, 200, 1) for d in DAYS]


def test_late_rerun_of_an_old_date_leaves_the_others_alone(api: LocalApiServer, site: Site) -> None:
    lake, db = site.lake, site.db
    for day in DAYS:
        user_metrics_pipeline(api_url=api.base_url, records=200, page_size=100, run_date=day)
    others = {d: snapshot(lake, db, d) for d in DAYS[1:]}
    late = user_metrics_pipeline(
        api_url=api.base_url, records=300, page_size=100, run_date=DAYS[0], seed=99
    )
    assert snapshot(lake, db, DAYS[0]).flow_run_ids == {late["flow_run_id"]}
    assert batches(db)[0] == (DAYS[0], 300, 1)
    assert {d: snapshot(lake, db, d) for d in DAYS[1:]} == others


@pytest.mark.slow
def test_backfill_cli_in_a_subprocess(
    api: LocalApiServer, subprocess_env: dict[str, str], paths: tuple[Path, Path]
) -> None:
    """The CLI range flags with a real process and a real DuckDB file: load, then skip."""
    _, db = paths
    args = [
        "--api-url",
        api.base_url,
        "--records",
        "200",
        "--page-size",
        "100",
        "--start-date",
        DAYS[0].isoformat(),
        "--end-date",
        DAYS[1].isoformat(),
    ]
    first = run_cli(args, subprocess_env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert batches(db) == [(d, 200, 1) for d in DAYS[:2]]
    runs = completed_runs(db)

    again = run_cli(args, subprocess_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped" in again.stdout and "loaded" not in again.stdout, again.stdout
    assert completed_runs(db) == runs

    # --force is covered in-process above; one more subprocess here would only add ~15 s.


def test_backward_range_is_bad_input(api: LocalApiServer, site: Site, capsys) -> None:
    from flows.cli import main

    lake, db = site.lake, site.db
    code = main(
        ["--api-url", api.base_url, "--start-date", "2026-06-03", "--end-date", "2026-06-01"]
    )
    err = capsys.readouterr().err
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and "2026-06-03" in lines[0] and "2026-06-01" in lines[0], err
    assert api.stats()["total"] == 0 and not lake.exists() and not db.exists()
