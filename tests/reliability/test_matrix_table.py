"""The fault matrix's end-of-session table gathers every case's row, with and without xdist."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.matrix_table import MatrixRow, table_lines

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
CASES = """
import pytest

from tests.reliability.matrix_table import MatrixRow, record


@pytest.mark.parametrize("i", range(4))
def test_case(request, i):
    record(request.node, MatrixRow(f"fault {i}", "completed" if i % 2 else "failed", 100 * i, 0.5))
"""


def test_table_lines() -> None:
    rows = [MatrixRow("429 storm", "completed", 600, 1.25), MatrixRow("down", "INVALID", 0, 0.5)]
    assert table_lines(rows) == [
        "fault      outcome    records loaded  seconds",
        "429 storm  completed             600     1.25",
        "down       INVALID                 0     0.50",
        "1 of 2 rows are an allowed outcome",
    ]


@pytest.mark.parametrize("args", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_every_row_reaches_the_summary(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest('pytest_plugins = ["tests.reliability.matrix_table"]\n')
    pytester.makepyfile(test_cases=CASES)
    result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    lines = [line for line in result.stdout.lines if line.strip()]
    start = next(i for i, line in enumerate(lines) if "fault matrix" in line)
    table = lines[start + 1 : start + 7]
    assert table[0].split() == ["fault", "outcome", "records", "loaded", "seconds"]
    # xdist gathers the rows in the order the cases finished.
    assert sorted(line.split()[:4] for line in table[1:5]) == [
        ["fault", str(i), "completed" if i % 2 else "failed", str(100 * i)] for i in range(4)
    ]
    assert table[5] == "4 of 4 rows are an allowed outcome"
