"""Shared fixtures: a real local Faker API on a free loopback port, and one Prefect test harness."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from local_api.faults import FaultConfig
from local_api.server import LocalApiServer

TEST_KEY = "test-hmac-key-0123456789abcdef"


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
    get_settings.cache_clear()
    hash_key.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
    hash_key.cache_clear()
