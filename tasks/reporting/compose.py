"""The user metrics report of a run, composed from the stored report rows: tables with small
counts hidden, charts, and the answers in words; created as artifacts only after the commit."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import duckdb
import pandas as pd

from tasks.common.stage import stage_task
from tasks.privacy.suppression import small_cell_note, suppress_small_counts
from tasks.reporting.artifacts import (
    Artifact,
    compose_reports,
    germany_share_sentence,
    over_60_sentence,
    top_countries_sentence,
)
from tasks.reporting.charts import build_charts, render_pngs
from tasks.reporting.queries import (
    COUNT_COLUMNS,
    gmail_by_age_group,
    report_history,
    report_results,
)


def published(key: str, df: pd.DataFrame, k: int) -> pd.DataFrame:
    """A table as people see it: counts of 1..k-1 (and figures derived from them) as `<k`."""
    counts, derived = COUNT_COLUMNS[key]
    return suppress_small_counts(df, counts, k, derived=derived)


@dataclass
class Published:
    """The report artifacts composed for the run, and the answers for the CLI."""

    answers: list[str]
    artifacts: list[Artifact]
    seconds_charts: float = 0.0  # rendering every chart (one browser session)


def compose_user_metrics(
    con: duckdb.DuckDBPyConnection, run_date: dt.date, records: int, k: int
) -> Published:
    """The report tables and the markdown report with charts, small counts as `<k` (not created)."""
    # Read through the run's open transaction: the staged rows, not the committed ones.
    stored = report_results(con, run_date)
    by_age = gmail_by_age_group(con, run_date)
    history = report_history(con)
    # Exact values stay in DuckDB; what people see hides counts of fewer than k people.
    reports = {key: published(key, df, k) for key, df in stored.items()}
    figures = build_charts(
        reports["top-gmail-countries"],
        published("gmail-by-age-group", by_age, k),
        published("history", history, k),
    )
    started = time.perf_counter()
    images = render_pngs(figures)  # one browser session for every chart; never raises
    seconds_charts = time.perf_counter() - started
    artifacts = compose_reports(run_date, records, reports, images, note=small_cell_note(k))
    answers = [
        germany_share_sentence(reports["germany-gmail-share"]),
        top_countries_sentence(reports["top-gmail-countries"]),
        over_60_sentence(reports["gmail-users-over-60"]),
    ]
    return Published(answers=answers, artifacts=artifacts, seconds_charts=seconds_charts)


compose_user_metrics_task = stage_task(compose_user_metrics)
