"""Prefect start-up: the CLI gives the temporary API server a realistic budget, and a start-up
that still fails is one line naming the setting to raise, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

from flows.cli import startup_budget
from local_api.server import LocalApiServer
from tasks.common.settings import Settings, get_settings
from tests.conftest import TEST_KEY
from tests.reliability.conftest import NO_BROWSER, ROOT, error_lines, run_cli

BUDGET_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def test_the_cli_gives_the_temporary_server_a_realistic_budget(monkeypatch) -> None:
    # Prefect's own default is 20 s, which a first run on a busy 2-core machine misses.
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    get_settings.cache_clear()
    try:
        with startup_budget() as budget:
            default = Settings.model_fields[BUDGET_ENV.lower()].default
            assert budget == default >= 120
            assert PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == budget
        monkeypatch.setenv(BUDGET_ENV, "240")  # the user's own value wins
        get_settings.cache_clear()
        with startup_budget() as budget:
            assert budget == PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == 240
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("soon", "Input should be a valid integer, unable to parse string as an integer"),
        ("0", "Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_budget_is_refused_in_one_line(value: str, why: str, tmp_path: Path) -> None:
    # Prefect reads the same variable, and refuses a bad value with a traceback when it loads:
    # the CLI's settings refuse it first, before anything is fetched or written.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        {
            BUDGET_ENV: value,
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "DATA_LAKE_DIR": str(tmp_path / "lake"),
            "DUCKDB_PATH": str(tmp_path / "db" / "faker.duckdb"),
            "PII_HASH_KEY": TEST_KEY,
            "PYTHONPATH": str(ROOT),
        }
    )
    done = run_cli(["--records", "10"], env, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: invalid setting {BUDGET_ENV} (got {value!r}): {why}"
    ]
    assert not (tmp_path / "lake").exists() and not (tmp_path / "db").exists()


@pytest.mark.slow
def test_a_start_up_that_fails_is_one_line(api: LocalApiServer, tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "PREFECT_API_URL", "PREFECT_HOME"))
    }
    env.update(
        {
            BUDGET_ENV: "1",  # absurdly low: the server cannot be up in a second
            "CLI_PREFECT_SERVER": "temporary",  # the default would start the local server
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "DATA_LAKE_DIR": str(tmp_path / "lake"),
            "DUCKDB_PATH": str(tmp_path / "db" / "faker.duckdb"),
            "PII_HASH_KEY": TEST_KEY,
            "BROWSER_PATH": NO_BROWSER,
            "PYTHONPATH": str(ROOT),
        }
    )
    done = run_cli(["--api-url", api.base_url, "--records", "10"], env)
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = error_lines(done.stderr)
    assert line.startswith("error: Prefect's temporary API server did not start within 1 s")
    assert BUDGET_ENV in line and "Traceback" not in done.stderr
    assert not (tmp_path / "lake").exists()  # nothing was fetched or written
