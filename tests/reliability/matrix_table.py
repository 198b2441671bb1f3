"""The fault matrix's table, printed at the end of the session: fault, outcome, records, seconds.

A pytest plugin (tests/conftest.py lists it in `pytest_plugins`). Each fault-matrix case records
its row in its test report's `user_properties`; pytest-xdist sends reports, user_properties
included, from the worker that ran the case to the controller, and `pytest_runtest_logreport`
runs there (or in the one process without xdist), so the table gathers every worker's rows.
"""

from __future__ import annotations

import dataclasses

import pytest

ROW_PROPERTY = "fault_matrix_row"


@dataclasses.dataclass(frozen=True)
class MatrixRow:
    """One line of the fault table printed at the end of the session."""

    fault: str
    outcome: str  # "completed", "failed", or "INVALID: ..." when neither contract held
    records_loaded: int
    seconds: float


def record(item: pytest.Item, row: MatrixRow) -> None:
    """Attach a case's row to its test reports (plain values, so xdist can send them)."""
    item.user_properties.append((ROW_PROPERTY, dataclasses.asdict(row)))


def table_lines(rows: list[MatrixRow]) -> list[str]:
    """The table: a header, one line per row, and how many rows are an allowed outcome."""
    width = max(len("fault"), *(len(r.fault) for r in rows))
    outcome_width = max(len("outcome"), *(len(r.outcome) for r in rows))
    lines = [
        f"{'fault':<{width}}  {'outcome':<{outcome_width}}  {'records loaded':>14}  {'seconds':>7}"
    ]
    lines += [
        f"{row.fault:<{width}}  {row.outcome:<{outcome_width}}  "
        f"{row.records_loaded:>14,}  {row.seconds:>7.2f}"
        for row in rows
    ]
    allowed = sum(r.outcome in ("completed", "failed") for r in rows)
    lines.append(f"{allowed} of {len(rows)} rows are an allowed outcome")
    return lines


class FaultMatrixTable:
    """Collects the rows of the session's reports and prints them in the terminal summary."""

    def __init__(self) -> None:
        self.rows: list[MatrixRow] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Setup and teardown reports carry the same properties: take the call's only.
        if report.when == "call":
            self.rows += [
                MatrixRow(**value) for name, value in report.user_properties if name == ROW_PROPERTY
            ]

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.rows:
            terminalreporter.section("fault matrix")
            for line in table_lines(self.rows):
                terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    """One table per session (an xdist worker's stays empty of readers, which is harmless)."""
    config.pluginmanager.register(FaultMatrixTable(), "fault-matrix-table")
