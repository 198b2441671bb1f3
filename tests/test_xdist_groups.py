"""`make test` runs on two xdist workers; tests under a ONE_WORKER_GROUPS path share one worker."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
# A session fixture as expensive as the e2e service: it must start on one worker only.
CONFTEST = """
import os

import pytest

from tests.conftest import pytest_xdist_make_scheduler  # noqa: F401


@pytest.fixture(scope="session")
def service():
    with open(os.path.join(os.environ["SERVICE_STARTS"], f"service-{os.getpid()}"), "w") as f:
        f.write("up")
"""
GROUPED = """
def test_{name}_{i}(service):
    pass
"""
LOOSE = """
import pytest


@pytest.mark.parametrize("i", range(8))
def test_loose(i):
    pass
"""


@pytest.mark.slow
def test_a_group_runs_on_one_worker_and_the_rest_anywhere(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    starts = pytester.mkdir("starts")
    monkeypatch.setenv("SERVICE_STARTS", str(starts))
    pytester.makeconftest(CONFTEST)
    # Plain folders, not packages: `tests` must stay this project's package, for the conftest.
    e2e = pytester.mkdir("tests") / "e2e"
    e2e.mkdir()
    for name in ("service", "ui"):
        body = "".join(GROUPED.format(name=name, i=i) for i in range(3))
        (e2e / f"test_{name}.py").write_text(body)
    (pytester.path / "tests" / "test_loose.py").write_text(LOOSE)
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", "-v")
    result.assert_outcomes(passed=14)
    workers: dict[str, set[str]] = {"e2e": set(), "all": set()}
    for line in result.stdout.lines:
        if line.startswith("[gw") and " PASSED " in line:
            worker = line.split("]")[0].strip("[")
            workers["all"].add(worker)
            if "tests/e2e/" in line:
                workers["e2e"].add(worker)
    assert len(workers["e2e"]) == 1 and workers["all"] == {"gw0", "gw1"}, result.stdout.str()
    assert len(list(starts.iterdir())) == 1  # the service started once
