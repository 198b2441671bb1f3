"""Which Prefect server a CLI run uses (issue 15, item 1; issue 21, items 7 and 8): `make run`
(CLI_PREFECT_SERVER=background) starts one in the background and says so, later runs use it,
`make stop` stops it; any other run with no server of its home uses Prefect's temporary server,
which ends with it. A port held by another server is named, never reported as ours. Neither
server holds the HMAC key (issue 14, item 4)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from flows import server as server_module
from flows import service
from flows.processes import ServiceError, ServiceState, free_port, wait_until
from flows.server import choose_server, ensure_server, port_holder, prefect_bin, running_server
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
    state = ServiceState(tmp_path / "prefect-home")
    try:
        first = _cli(api, {**env, "CLI_PREFECT_SERVER": "background"}, "2026-10-06")  # make run
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


def test_a_plain_cli_run_leaves_no_server_and_gives_it_no_key(api, tmp_path: Path) -> None:
    """A CI job or cron entry with a fresh home: Prefect's temporary server, gone at exit."""
    key = secrets.token_hex(32)
    env = _env(tmp_path, key)
    cmd = [sys.executable, "-m", "flows.cli", "--api-url", api.base_url]
    cmd += ["--records", "1000", "--run-date", "2026-10-08"]
    done, watcher = run_watched(cmd, env, ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Prefect server" not in done.stdout
    assert ServiceState(tmp_path / "prefect-home").pid("server") is None
    assert key.encode() in watcher.root_environ  # the reading works
    servers = {pid: s for (pid, _), s in watcher.seen.items() if "prefect.server" in s.cmdline}
    assert servers, [s.cmdline for s in watcher.seen.values()]
    assert all(key.encode() not in s.environ for s in servers.values())
    # The temporary server ended with the run (its process may take a moment to be reaped).
    wait_until(
        lambda: not any(map(process_alive, servers)), "servers to end", 30, None, tmp_path / "x"
    )


def test_five_runs_with_fresh_homes_keep_no_server(tmp_path: Path) -> None:
    """The decision for five CLI runs with fresh homes, as a CI job or a cron entry makes them."""
    for i in range(5):
        env = _env(tmp_path / str(i), "k")
        state = ServiceState(Path(env["PREFECT_HOME"]))
        assert choose_server(None, None, state, env) == "temporary"
        assert not state.dir.exists()  # nothing was started or recorded
    state = ServiceState(tmp_path / "fresh")
    env = _env(tmp_path / "fresh", "k")
    assert choose_server(None, "background", state, env) == "background"  # make run
    assert choose_server("http://127.0.0.1:1/api", "background", state, env) == "configured"


def _start_foreign_server(state: ServiceState, port: int) -> None:
    """A real Prefect server of another checkout: its own PREFECT_HOME, on `port`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PREFECT_"))}
    env.update(PREFECT_HOME=str(state.dir.parent), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    url = f"http://127.0.0.1:{port}/api"
    cmd = [prefect_bin(), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = state.launch("server", cmd, env, server=url)
    ready = lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200  # noqa: E731
    wait_until(lambda: _quiet(ready), "foreign server", 180, proc, state.log("server"))


def _quiet(check) -> bool:
    try:
        return bool(check())
    except httpx.HTTPError:
        return False


def test_a_port_held_by_another_server_is_named_and_never_reported_as_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    env = _env(tmp_path, "k")
    env.update(PREFECT_SERVER_API_PORT=str(port), PREFECT_HOME=str(tmp_path.resolve() / "home"))
    ours, foreign = (
        ServiceState(Path(env["PREFECT_HOME"])),
        ServiceState(tmp_path / "other-checkout"),
    )
    try:
        _start_foreign_server(foreign, port)
        foreign_pid = foreign.pid("server")
        assert foreign_pid is not None
        # The port the user set is held: one line naming by what, and nothing recorded.
        with pytest.raises(ServiceError) as refused:
            ensure_server(ours, env)
        other = (tmp_path / "other-checkout").resolve()
        assert str(refused.value) == (
            f"port {port} is held by a Prefect server of another PREFECT_HOME ({other}): "
            "stop it, or set PREFECT_SERVER_API_PORT to a free port"
        )
        assert ours.pid("server") is None and "server" not in ours.urls()
        monkeypatch.setenv("PREFECT_HOME", env["PREFECT_HOME"])  # what `make trigger` reads
        assert service.trigger() == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"error: the local service is not running (no live server recorded in {ours.dir}); "
            "start it with `make serve`"
        ]

        # The default port held (as 4200 by another checkout): named, then a free port, ours.
        monkeypatch.setattr(server_module, "DEFAULT_PORT", port)
        del env["PREFECT_SERVER_API_PORT"]
        url, lines = ensure_server(ours, env)
        note, started = lines.splitlines()
        assert note.startswith(
            f"Port {port} is held by a Prefect server of another PREFECT_HOME ({other}): "
            "the server uses port "
        )
        pid = ours.pid("server")
        assert pid is not None and pid != foreign_pid
        assert f"started (pid {pid}) at {url}" in started and f":{port}/" not in url
        assert ours.urls()["server"] == url
        # What trigger, stop and the next CLI run read: this server, answering as ours.
        assert running_server(ours, env) == url
        assert choose_server(None, None, ours, env) == "recorded"
    finally:
        monkeypatch.setenv("PREFECT_HOME", env["PREFECT_HOME"])
        capsys.readouterr()
        assert service.stop() == 0  # `make stop`
        stopped = capsys.readouterr().out
        foreign_alive = foreign.pid("server") is not None
        foreign.stop("server")
    assert f"server   stopped (pid {pid})" in stopped, stopped
    assert foreign_alive  # `make stop` stops only what `make serve` started


def test_a_port_held_by_something_else_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = _env(tmp_path, "k")
        assert port_holder("127.0.0.1", port, env) == (
            "a process that is not a Prefect server (nothing answers "
            f"http://127.0.0.1:{port}/api/health)"
        )
    assert port_holder("127.0.0.1", port, env) is None


def test_a_bad_server_mode_is_refused_up_front(api, tmp_path: Path) -> None:
    env = _env(tmp_path, secrets.token_hex(32), CLI_PREFECT_SERVER="cloud")
    done = _cli(api, env, "2026-10-09")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: invalid setting CLI_PREFECT_SERVER (got 'cloud'): Input should be 'background' "
        "or 'temporary'"
    ]


def test_a_port_left_in_time_wait_is_free_but_a_listener_holds_it() -> None:
    import socket

    from flows.server import _port_free

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    assert not _port_free("127.0.0.1", port)  # a listener holds it
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server's side closes first: its port stays in TIME-WAIT
    client.close()
    listener.close()
    assert _port_free("127.0.0.1", port)


def test_a_client_of_the_local_server_sends_its_auth_string() -> None:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    url = "http://127.0.0.1:4321/api"
    server = {"PREFECT_SERVER_API_AUTH_STRING": "admin:s3cret", "PREFECT_API_AUTH_STRING": "old"}
    assert server_module.client_settings(url, server) == {
        PREFECT_API_URL: url,
        PREFECT_API_AUTH_STRING: "admin:s3cret",  # what the server asks every client for
    }
    client = {"PREFECT_API_AUTH_STRING": "user:pw"}
    assert server_module.client_settings(url, client)[PREFECT_API_AUTH_STRING] == "user:pw"
    assert server_module.client_settings(url, {}) == {PREFECT_API_URL: url}
