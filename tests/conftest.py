"""Shared fixtures: a real local Faker API on a free loopback port, and one Prefect test harness."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest

from local_api.faults import FaultConfig
from local_api.server import LocalApiServer
from tasks.common.settings import ENV_FILE_VARIABLE, SECRETS_DIR_VARIABLE

# No test reads a developer's `.env` (a key, REQUESTS_PER_MINUTE...). Set at conftest import,
# before anything reads settings, so xdist workers (which import this conftest too) and the
# subprocesses tests start (they inherit or copy this environment) read none either. Nor a
# host's file secrets (/run/secrets/pii_hash_key): a test names its own secrets folder.
os.environ[ENV_FILE_VARIABLE] = ""
os.environ[SECRETS_DIR_VARIABLE] = ""

TEST_KEY = "test-hmac-key-0123456789abcdef"
# Loaded here, where the xdist controller sees it too: the fault matrix's end-of-session table.
pytest_plugins = ["tests.reliability.matrix_table"]


# Under pytest-xdist (`make test`: -n 2 --dist loadgroup) each worker is a session of its own: its
# own Prefect test harness, tmp dirs and free ports. Tests that share more than that stay on one
# worker, by path: the e2e tests share one session-scoped Prefect service (started once, ~2 min)
# and write the UI screenshot to a fixed path in the checkout. (Paths, not xdist_group marks:
# xdist 3.8 carries a mark's group in a node id suffix that pytest 9.2 drops, pytest-xdist#1386.)
ONE_WORKER_GROUPS = {"tests/e2e/": "e2e"}

# `make test-fast` runs `-m "not slow"`. A test is fast unless it lives under a SLOW_PATHS prefix
# (the e2e service, whole-flow runs and drills, the benchmark) or carries @pytest.mark.slow (a
# real browser, a process or pytest session of its own).
SLOW_PATHS = ("tests/e2e/", "tests/flows/", "tests/reliability/", "tests/test_bench.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests under SLOW_PATHS slow."""
    for item in items:
        if item.nodeid.startswith(SLOW_PATHS):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """--dist loadgroup, with the groups of ONE_WORKER_GROUPS; other tests go one by one."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class PathGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            for prefix, group in ONE_WORKER_GROUPS.items():
                if nodeid.startswith(prefix):
                    return group
            return super()._split_scope(nodeid)

    return PathGroupScheduling(config, log)


@pytest.fixture
def start_api() -> Iterator[Callable[..., LocalApiServer]]:
    """Start local API servers (with faults) on free ports; all are stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(**faults: object) -> LocalApiServer:
            return stack.enter_context(LocalApiServer(port=0, faults=FaultConfig(**faults)))

        yield start


@pytest.fixture
def api(start_api: Callable[..., LocalApiServer]) -> LocalApiServer:
    """A fault-free local API."""
    return start_api()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless Chromium that chart images and the UI test need, found as the pipeline finds
    it; a machine without one fails the tests that use it, never skips them."""
    from tasks.common.run_config import ChartBrowserConfig
    from tasks.common.settings import get_settings
    from tasks.reporting.charts import find_browser

    # BROWSER_PATH as the run reads it, never a download.
    path = find_browser(ChartBrowserConfig(path=get_settings().browser_path))
    if path is None:
        pytest.fail(
            "no Chromium found: chart images and this test need a headless Chromium. Install "
            "Debian's (`apt-get install chromium`; `make test` does it when run as root) or set "
            "BROWSER_PATH to a Chrome/Chromium executable.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def prefect_storage(tmp_path_factory: pytest.TempPathFactory):
    """One Prefect test harness per session (it takes ~15 s), with results in a known folder."""
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    # Persist by default, so a task that forgot `persist_result=False` would show up in scans.
    with (
        temporary_settings(
            {PREFECT_LOCAL_STORAGE_PATH: storage, PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}
        ),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield storage


@pytest.fixture
def pipeline_env(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """Settings for a flow run: lake and database under tmp_path, a test key, fast retries."""
    from tasks.common.secrets import hash_key
    from tasks.common.settings import get_settings

    monkeypatch.setenv("DATA_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("DUCKDB_PATH", str(tmp_path / "db" / "faker.duckdb"))
    monkeypatch.setenv("PII_HASH_KEY", TEST_KEY)
    monkeypatch.setenv("RETRY_BACKOFF_BASE_SECONDS", "0.01")
    monkeypatch.setenv("RETRY_BACKOFF_MAX_SECONDS", "0.05")
    monkeypatch.setenv("RETRY_AFTER_MAX_SECONDS", "0.05")
    monkeypatch.setenv("HTTP_READ_TIMEOUT_SECONDS", "2")
    # Most tests drill a page's own attempts: one try per range. tests/flows/test_range_retries.py
    # turns the range's retries on.
    monkeypatch.setenv("FETCH_RANGE_RETRIES", "0")
    get_settings.cache_clear()
    hash_key.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
    hash_key.cache_clear()
