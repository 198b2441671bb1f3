"""The Prefect server a run talks to, and the pieces `make serve` and the CLI share to start it.

A CLI run (`make run`, `python -m flows.cli`, its range backfill) uses, in order:

1. the API Prefect is already pointed at (`PREFECT_API_URL`, from the environment or a profile);
2. the local server `make serve` (or an earlier `make run`) started, recorded in
   `$PREFECT_HOME/service/`, if its process lives and the server answering is this home's;
3. with `CLI_PREFECT_SERVER=background` (`make run` sets it), a server started now in the
   background and left running for the next run, recorded the same way, so `make stop` stops
   it and `make serve` reuses it;
4. otherwise Prefect's temporary per-process server, which ends with the run: a CI job, a cron
   entry or a test harness with a fresh PREFECT_HOME each time leaves no server behind.

`CLI_PREFECT_SERVER=temporary` skips 2 and 3.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx

from flows.processes import PROJECT_DIR, ServiceError, ServiceState, free_port, responds, wait_until
from tasks.common.secrets import without_key
from tasks.common.settings import get_settings

DEFAULT_PORT = 4200
# Generous, for a busy 2-core machine and a server's first start (a fresh SQLite): giving up
# early fails the run, waiting longer for a process that does start costs nothing.
START_SECONDS = {"server": 180.0, "api": 120.0, "worker": 120.0}
LABELS = {"server": "Prefect server", "api": "Local Faker API", "worker": "Worker"}


def prefect_bin() -> str:
    """The `prefect` CLI of this interpreter, so flow runs use the project's .venv."""
    candidate = Path(sys.executable).with_name("prefect")
    return str(candidate) if candidate.exists() else "prefect"


def base_env(api_url: str | None = None) -> dict[str, str]:
    """This environment plus the Prefect settings every service command needs."""
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env["PREFECT_HOME"] = str(Path(env.get("PREFECT_HOME") or PROJECT_DIR / ".prefect").resolve())
    env["PROJECT_DIR"] = env.get("PROJECT_DIR") or str(PROJECT_DIR)  # prefect.yaml's pull step
    if auth := auth_string(env):
        # The server asks every client for it: the CLI, the worker and the flow runs it starts.
        env["PREFECT_API_AUTH_STRING"] = auth
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def ensure_process(
    state: ServiceState, name: str, cmd: list[str], env: Mapping[str, str], url: str, health: str
) -> str:
    """Reuse our `name` if it still answers at `url`, else (re)start it and wait for `health`;
    returns one line saying which."""
    if state.pid(name) is not None and state.urls().get(name) == url and responds(health):
        return f"{LABELS[name]:<18} already running (pid {state.pid(name)}) at {url}"
    state.stop(name)
    proc = state.launch(name, cmd, env, **{name: url})
    wait_until(lambda: responds(health), name, START_SECONDS[name], proc, state.log(name))
    return f"{LABELS[name]:<18} started (pid {proc.pid}) at {url}, log {state.log(name)}"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # As the server binds it: connections of a stopped server left in TIME-WAIT do not hold
        # the port (a listener still does).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def auth_string(env: Mapping[str, str]) -> str | None:
    """The credentials a client of the local server sends: the server's own auth string (what it
    asks every client for), else the client's PREFECT_API_AUTH_STRING."""
    return env.get("PREFECT_SERVER_API_AUTH_STRING") or env.get("PREFECT_API_AUTH_STRING") or None


def client_settings(url: str, env: Mapping[str, str] | None = None) -> dict[Any, str]:
    """Prefect's client settings (for `temporary_settings`) for the server at API `url`, with
    the credentials `env` (default: this process's environment) holds for it."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    settings: dict[Any, str] = {PREFECT_API_URL: url}
    if auth := auth_string(os.environ if env is None else env):
        settings[PREFECT_API_AUTH_STRING] = auth
    return settings


def _auth(env: Mapping[str, str]) -> dict[str, str]:
    auth = auth_string(env)
    return {"Authorization": f"Basic {base64.b64encode(auth.encode()).decode()}"} if auth else {}


def served_home(url: str, env: Mapping[str, str]) -> Path | None:
    """The PREFECT_HOME of the Prefect server answering at API `url` (its database is there),
    None if none answers or it refuses our credentials."""
    with suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
        found = httpx.get(f"{url}/admin/settings", headers=_auth(env), timeout=5)
        if found.status_code == 200:
            return Path(found.json()["home"]).expanduser().resolve()
    return None


def port_holder(host: str, port: int, env: Mapping[str, str]) -> str | None:
    """What holds `port` on `host`, in words, or None if it is free."""
    if _port_free(host, port):
        return None
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{client_host}:{port}/api"
    if not responds(f"{url}/health"):
        return f"a process that is not a Prefect server (nothing answers {url}/health)"
    home = served_home(url, env)
    if home is None:
        return "a Prefect server that refuses our credentials (so its PREFECT_HOME is unknown)"
    if home == Path(env["PREFECT_HOME"]).resolve():
        return f"a Prefect server of this PREFECT_HOME ({home}) that `make serve` did not record"
    return f"a Prefect server of another PREFECT_HOME ({home})"


def server_url(env: Mapping[str, str], port: int | None = None) -> tuple[str, str, str]:
    """(host, port, API URL) of the local server: PREFECT_SERVER_API_HOST/PORT, else loopback
    and 4200, or `port`."""
    host = env.get("PREFECT_SERVER_API_HOST", "127.0.0.1")
    port_text = str(port) if port else env.get("PREFECT_SERVER_API_PORT", str(DEFAULT_PORT))
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return host, port_text, f"http://{client_host}:{port_text}/api"


def running_server(state: ServiceState, env: Mapping[str, str]) -> str | None:
    """The API URL of the server recorded in `state` if its process lives and the server
    answering there is this PREFECT_HOME's, else None."""
    url = state.urls().get("server")
    if state.pid("server") is None or not url or not responds(f"{url}/health"):
        return None
    return url if served_home(url, env) == Path(env["PREFECT_HOME"]).resolve() else None


def ensure_server(state: ServiceState, env: Mapping[str, str]) -> tuple[str, str]:
    """The local Prefect server, started unless ours already answers; (API URL, its lines).

    Only a server this call started, or one recorded earlier that is still ours, is reported
    or recorded: a port held by anything else is named, then left for a free one (the default
    port) or refused (a port the user set). Not `prefect server start --background`: see
    flows/processes.py. The server makes no pseudonyms, so it never gets the key.
    """
    if url := running_server(state, env):
        return url, f"{LABELS['server']:<18} already running (pid {state.pid('server')}) at {url}"
    state.stop("server")  # a recorded one that no longer answers as ours
    host, port, url = server_url(env)
    notes = []
    if holder := port_holder(host, int(port), env):
        if "PREFECT_SERVER_API_PORT" in env or "this PREFECT_HOME" in holder:
            raise ServiceError(
                f"port {port} is held by {holder}: stop it, or set PREFECT_SERVER_API_PORT "
                "to a free port"
            )
        with suppress(OSError):  # a host we cannot bind: the server says why in its log
            host, port, url = server_url(env, free_port(host))
        notes.append(f"Port {DEFAULT_PORT} is held by {holder}: the server uses port {port}")
    cmd = [prefect_bin(), "server", "start", "--host", host, "--port", port]
    server_env = without_key(env)
    server_env.setdefault("PREFECT_UI_URL", url.removesuffix("/api"))  # the links in alerts
    home = Path(env["PREFECT_HOME"]).resolve()
    proc = state.launch("server", cmd, server_env, server=url)
    log = state.log("server")

    def ours() -> bool:
        # A server that answers there is not proof: another one may hold the port while ours
        # exits with "address in use". Ours lives and the answering one serves our database.
        return proc.poll() is None and served_home(url, env) == home

    try:
        wait_until(ours, "server", START_SECONDS["server"], proc, log)
    except ServiceError:
        state.stop("server")  # record nothing we did not start
        raise
    return url, "\n".join(
        [*notes, f"{LABELS['server']:<18} started (pid {proc.pid}) at {url}, log {log}"]
    )


def choose_server(
    api_url: str | None, mode: str | None, state: ServiceState, env: Mapping[str, str]
) -> str:
    """Which server a CLI run uses: `configured` (PREFECT_API_URL), `recorded` (ours, running),
    `background` (start one and keep it), or `temporary` (Prefect's, ends with the process)."""
    if api_url:
        return "configured"
    if mode == "temporary":
        return "temporary"
    if running_server(state, env):
        return "recorded"
    # Only `make run` (or a user who asks) keeps a server: a CI job, a cron entry or a test
    # harness with a fresh PREFECT_HOME each time would leave one server process per home.
    return "background" if mode == "background" else "temporary"


def server_for_run() -> str | None:
    """The API URL a CLI run should use, starting the local server if need be (printing one
    line), or None for the API Prefect is set to or its temporary server."""
    from prefect.settings import PREFECT_API_URL

    env = base_env()
    state = ServiceState(Path(env["PREFECT_HOME"]))
    mode = get_settings().cli_prefect_server
    choice = choose_server(PREFECT_API_URL.value(), mode, state, env)
    if choice in ("configured", "temporary"):
        return None
    try:
        url, lines = ensure_server(state, env)
    except ServiceError as exc:  # one line: what, and where the server's own log is
        raise ServiceError(
            f"the local Prefect server did not start ({str(exc).splitlines()[0]}; "
            f"its log: {state.log('server')}): free the port or set CLI_PREFECT_SERVER=temporary"
        ) from None
    *notes, line = lines.splitlines()
    for note in notes:
        print(note, flush=True)
    how = "started in the background" if " started " in line else "already running"
    ui = url.removesuffix("/api")
    print(f"Prefect server {how} at {ui} (kept for later runs; `make stop` stops it)", flush=True)
    return url
