"""The user metrics report of a run, composed from the stored report rows: tables with small
counts hidden, charts, and the answers in words; created as artifacts only after the commit."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import duckdb

from tasks.common.reports import TOP_GMAIL_COUNTRIES
from tasks.common.run_config import ChartBrowserConfig
from tasks.common.tasks import as_task
from tasks.privacy.suppression import small_cell_note
from tasks.reporting.artifacts import Artifact, answers, compose_reports
from tasks.reporting.charts import build_charts, render_pngs
from tasks.reporting.disclosure import Shown, shown_figures
from tasks.reporting.queries import gmail_by_age_group, report_history, report_results


def shown_report(con: duckdb.DuckDBPyConnection, run_date: dt.date, k: int) -> Shown:
    """The run's report tables and chart data as people will see them (nothing rendered)."""
    # Read through the run's open transaction: the staged rows, not the committed ones.
    stored = report_results(con, run_date)
    # Exact values stay in DuckDB; what people see hides counts of fewer than k people, and
    # whatever would let a reader work such a count out from a published total.
    return shown_figures(stored, gmail_by_age_group(con, run_date), report_history(con), k)


@dataclass
class Composed:
    """The report artifacts composed for the run, and the answers for the CLI."""

    answers: list[str]
    artifacts: list[Artifact]
    seconds_charts: float = 0.0  # rendering every chart (one browser session)


def compose_user_metrics(
    con: duckdb.DuckDBPyConnection,
    run_date: dt.date,
    records: int,
    k: int,
    charts: ChartBrowserConfig | None = None,
) -> Composed:
    """The report tables and the markdown report with charts, small counts hidden (not created)."""
    shown = shown_report(con, run_date, k)
    reports = shown.reports
    figures = build_charts(reports[TOP_GMAIL_COUNTRIES.key], shown.by_age, shown.history)
    started = time.perf_counter()
    images = render_pngs(figures, config=charts)  # one browser for every chart; never raises
    seconds_charts = time.perf_counter() - started
    artifacts = compose_reports(run_date, records, reports, images, note=small_cell_note(k))
    return Composed(answers=answers(reports), artifacts=artifacts, seconds_charts=seconds_charts)


compose_user_metrics_task = as_task(compose_user_metrics)
