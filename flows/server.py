"""The Prefect server a run talks to, and the pieces `make serve` and the CLI share to start it.

A CLI run (`make run`, `python -m flows.user_metrics`, its range backfill) uses, in order:

1. the API Prefect is already pointed at (`PREFECT_API_URL`, from the environment or a profile);
2. the local server `make serve` (or an earlier run) started, recorded in `$PREFECT_HOME/service/`,
   if it answers;
3. a server started now in the background and left running for the next run, recorded the same
   way, so `make stop` stops it and `make serve` reuses it.

Prefect's temporary per-process server costs 20-30 s at every start on a busy 2-core machine
(and more than its own 20 s limit now and then); it is used only when asked for:
`CLI_PREFECT_SERVER=temporary`.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

from flows.processes import PROJECT_DIR, ServiceError, State, answers, free_port, wait_until
from tasks.common.inputs import InputError
from tasks.common.secrets import without_key

DEFAULT_PORT = 4200
# Sized for a busy 2-core machine: the server's first start (a fresh SQLite) took ~12 s quiet.
START_SECONDS = {"server": 180.0, "api": 120.0, "worker": 120.0}
LABELS = {"server": "Prefect server", "api": "Local Faker API", "worker": "Worker"}
MODE_ENV = "CLI_PREFECT_SERVER"
MODES = ("background", "temporary")


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
    if env.get("PREFECT_SERVER_API_AUTH_STRING"):
        # The server asks every client for it: the CLI, the worker and the flow runs it starts.
        env["PREFECT_API_AUTH_STRING"] = env["PREFECT_SERVER_API_AUTH_STRING"]
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def ensure_process(
    state: State, name: str, cmd: list[str], env: Mapping[str, str], url: str, health: str
) -> str:
    """Reuse our `name` if it still answers at `url`, else (re)start it and wait for `health`;
    returns one line saying which."""
    if state.pid(name) is not None and state.urls().get(name) == url and answers(health):
        return f"{LABELS[name]:<18} already running (pid {state.pid(name)}) at {url}"
    state.stop(name)
    proc = state.launch(name, cmd, env, **{name: url})
    wait_until(lambda: answers(health), name, START_SECONDS[name], proc, state.log(name))
    return f"{LABELS[name]:<18} started (pid {proc.pid}) at {url}, log {state.log(name)}"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def server_url(env: Mapping[str, str], reuse: bool = False) -> tuple[str, str, str]:
    """(host, port, API URL) of the local server: PREFECT_SERVER_API_HOST/PORT, else loopback
    and 4200. With `reuse`, a recorded server's URL, and a free port if 4200 is taken by others."""
    host = env.get("PREFECT_SERVER_API_HOST", "127.0.0.1")
    port = env.get("PREFECT_SERVER_API_PORT", str(DEFAULT_PORT))
    if reuse:
        recorded = State(Path(env["PREFECT_HOME"])).urls().get("server")
        if recorded and answers(f"{recorded}/health"):
            port = recorded.rsplit(":", 1)[1].split("/")[0]
        elif not _port_free(host, int(port)):
            with suppress(OSError):  # a host we cannot bind: the server says why in its log
                port = str(free_port(host))
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return host, port, f"http://{client_host}:{port}/api"


def ensure_server(state: State, env: Mapping[str, str], reuse: bool = False) -> tuple[str, str]:
    """The local Prefect server, started unless ours already answers; (API URL, one line).

    Not `prefect server start --background`: see flows/processes.py. The server makes no
    pseudonyms, so it never gets the key.
    """
    host, port, url = server_url(env, reuse)
    cmd = [prefect_bin(), "server", "start", "--host", host, "--port", port]
    server_env = without_key(env)
    server_env.setdefault("PREFECT_UI_URL", url.removesuffix("/api"))  # the links in alerts
    return url, ensure_process(state, "server", cmd, server_env, url, f"{url}/health")


def server_mode() -> str:
    """CLI_PREFECT_SERVER: `background` (the default) or `temporary`; InputError otherwise."""
    mode = os.environ.get(MODE_ENV, "").strip().lower() or MODES[0]
    if mode not in MODES:
        raise InputError(f"{MODE_ENV}={mode!r} is not one of {', '.join(MODES)}")
    return mode


def server_for_run() -> str | None:
    """The API URL a CLI run should use, starting the local server if need be, or None where
    Prefect already has one or the user asked for the temporary server. Prints one line."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or server_mode() == "temporary":
        return None
    env = base_env()
    state = State(Path(env["PREFECT_HOME"]))
    try:
        url, line = ensure_server(state, env, reuse=True)
    except ServiceError as exc:  # one line: what, and where the server's own log is
        raise ServiceError(
            f"the local Prefect server did not start ({str(exc).splitlines()[0]}; "
            f"its log: {state.log('server')}): free the port or set {MODE_ENV}=temporary"
        ) from None
    how = "started in the background" if " started " in line else "already running"
    ui = url.removesuffix("/api")
    print(f"Prefect server {how} at {ui} (kept for later runs; `make stop` stops it)", flush=True)
    return url
