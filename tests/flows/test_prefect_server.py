"""The CLI reuses one local Prefect server (issue 15, item 1): the first run starts it in the
background and says so, the next run uses it, `make stop` stops it; Prefect's temporary server
only when asked for. Neither server holds the HMAC key (issue 14, item 4)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from flows.processes import State, free_port
from tasks.storage.recovery import process_alive
from tests.helpers import run_watched
from tests.reliability.conftest import NO_BROWSER, run_cli

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)


def _env(tmp_path: Path, key: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "PREFECT_", "CLI_PREFECT_SERVER"))
    }
    env.update(
        PII_HASH_KEY=key,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_API_PORT=str(free_port()),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DATA_LAKE_DIR=str(tmp_path / "lake"),
        DUCKDB_PATH=str(tmp_path / "db" / "faker.duckdb"),
        BROWSER_PATH=NO_BROWSER,
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def _cli(api, env: dict[str, str], day: str) -> subprocess.CompletedProcess[str]:
    args = ["--api-url", api.base_url, "--records", "1000", "--run-date", day]
    return run_cli(args, env, timeout=600)


def _stop(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "flows.service", "stop"]
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_runs_share_one_background_server_until_make_stop(api, tmp_path: Path) -> None:
    key = secrets.token_hex(32)
    env = _env(tmp_path, key)
    state = State(tmp_path / "prefect-home")
    try:
        first = _cli(api, env, "2026-10-06")
        assert first.returncode == 0, first.stderr[-2000:]
        url = f"http://127.0.0.1:{env['PREFECT_SERVER_API_PORT']}"
        assert f"Prefect server started in the background at {url}" in first.stdout
        pid = state.pid("server")
        assert pid is not None and process_alive(pid)  # left running when the CLI exited
        environ = (Path("/proc") / str(pid) / "environ").read_bytes()
        assert key.encode() not in environ and b"PII_HASH_KEY" not in environ

        second = _cli(api, env, "2026-10-07")
        assert second.returncode == 0, second.stderr[-2000:]
        assert f"Prefect server already running at {url}" in second.stdout
        assert state.pid("server") == pid
        # Both runs are in that server's database: the UI shows them.
        found = httpx.post(f"{url}/api/flow_runs/filter", json={}, timeout=30).json()
        names = {run["name"] for run in found}
        assert {"run-date-2026-10-06", "run-date-2026-10-07"} <= names, names
    finally:
        stopped = _stop(env)
    assert stopped.returncode == 0 and f"stopped (pid {pid})" in stopped.stdout, stopped.stdout
    assert not process_alive(pid)


def test_the_temporary_server_only_when_asked_and_without_the_key(api, tmp_path: Path) -> None:
    key = secrets.token_hex(32)
    env = _env(tmp_path, key, CLI_PREFECT_SERVER="temporary")
    cmd = [sys.executable, "-m", "flows.user_metrics", "--api-url", api.base_url]
    cmd += ["--records", "1000", "--run-date", "2026-10-08"]
    done, watcher = run_watched(cmd, env, ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Prefect server" not in done.stdout
    assert State(tmp_path / "prefect-home").pid("server") is None
    assert key.encode() in watcher.root_environ  # the reading works
    servers = [s for s in watcher.seen.values() if "prefect.server" in s.cmdline]
    assert servers, [s.cmdline for s in watcher.seen.values()]
    assert all(key.encode() not in s.environ for s in servers)


def test_a_bad_server_mode_is_refused_up_front(api, tmp_path: Path) -> None:
    env = _env(tmp_path, secrets.token_hex(32), CLI_PREFECT_SERVER="cloud")
    done = _cli(api, env, "2026-10-09")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: CLI_PREFECT_SERVER='cloud' is not one of background, temporary"
    ]
