"""The pipeline as a local Prefect service: server, local Faker API, work pool, deployments, worker.

python -m flows.service serve     start what is not running yet (idempotent), print the UI URL
python -m flows.service trigger   run 'user-metrics-pipeline/daily' and wait; non-zero unless done
python -m flows.service stop      stop what `serve` started, by the process ids it recorded
python -m flows.service worker    container entry: create the pool, deploy, become the worker

State lives in `$PREFECT_HOME/service/` (pid and log files; git-ignored under `.prefect/`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from tasks.storage.recovery import process_alive

PROJECT_DIR = Path(__file__).resolve().parents[1]
POOL = "faker-pool"
DAILY = "user-metrics-pipeline/daily"
DEFAULT_PORT = 4200
# Marks in /proc/<pid>/cmdline that identify each of our processes, so a recycled pid is never hit.
COMMAND_MARKS = {"server": "server", "api": "local_api", "worker": "worker"}


class ServiceError(RuntimeError):
    """A step of the local service failed; the message says which and where its log is."""


# --- processes -----------------------------------------------------------------------------------


def prefect_bin() -> str:
    """The `prefect` CLI of this interpreter, so flow runs use the project's .venv."""
    candidate = Path(sys.executable).with_name("prefect")
    return str(candidate) if candidate.exists() else "prefect"


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on `host` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def start_process(
    cmd: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path = PROJECT_DIR
) -> subprocess.Popen[bytes]:
    """Start `cmd` in a new session, so its whole process group can be stopped; log to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(cmd),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group, again (a worker shuts down on the second), then SIGKILL."""
    for sig, wait in (
        (signal.SIGTERM, timeout),
        (signal.SIGTERM, timeout / 2),
        (signal.SIGKILL, 5),
    ):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            if not process_alive(pid):
                # The leader is gone; children in its group may linger a moment longer.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                return
            time.sleep(0.1)


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    """Poll `url` until it answers 200; fail early, with the log's tail, if `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{url}: process exited with {proc.returncode}{_tail(log)}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{url} did not answer within {timeout:.0f}s{_tail(log)}")
        time.sleep(0.2)


def _tail(log: Path | None, lines: int = 20) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(text)


# --- state ---------------------------------------------------------------------------------------


class State:
    """Pid files, logs and URLs of the local service under `$PREFECT_HOME/service`."""

    def __init__(self, prefect_home: Path) -> None:
        self.dir = prefect_home / "service"

    def log(self, name: str) -> Path:
        """Log file of one process."""
        return self.dir / f"{name}.log"

    def record(self, name: str, pid: int) -> None:
        """Remember the pid of a process we started."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / f"{name}.pid").write_text(f"{pid}\n")

    def pid(self, name: str) -> int | None:
        """The recorded pid if that process still runs and is still ours, else None."""
        path = self.dir / f"{name}.pid"
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        if not process_alive(pid):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and COMMAND_MARKS[name] not in cmdline.read_bytes().decode(
            errors="ignore"
        ):
            return None  # the pid was recycled by an unrelated process
        return pid

    def forget(self, name: str) -> None:
        """Drop a pid file."""
        (self.dir / f"{name}.pid").unlink(missing_ok=True)

    @property
    def urls_file(self) -> Path:
        """Where the server and API URLs of the running service are kept."""
        return self.dir / "urls.json"

    def urls(self) -> dict[str, str]:
        """The recorded URLs (`server`, `api`), empty if none."""
        try:
            return dict(json.loads(self.urls_file.read_text()))
        except (OSError, ValueError):
            return {}

    def save_urls(self, **urls: str) -> None:
        """Merge URLs into the record."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.urls_file.write_text(json.dumps({**self.urls(), **urls}, indent=2) + "\n")


def prefect_home() -> Path:
    """PREFECT_HOME, defaulting to the project's git-ignored `.prefect/` (as the Makefile does)."""
    return Path(os.environ.get("PREFECT_HOME") or PROJECT_DIR / ".prefect").resolve()


def base_env(api_url: str | None = None) -> dict[str, str]:
    """This environment plus the Prefect settings every service command needs."""
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env["PREFECT_HOME"] = str(prefect_home())
    env["PROJECT_DIR"] = str(PROJECT_DIR)  # read by the pull step of prefect.yaml
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def run_cli(args: Sequence[str], env: Mapping[str, str], what: str, timeout: float = 300) -> None:
    """Run a `prefect` CLI command to completion; raise with its output if it fails."""
    done = subprocess.run(
        [prefect_bin(), *args],
        env=dict(env),
        cwd=PROJECT_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise ServiceError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def create_pool_and_deploy(env: Mapping[str, str]) -> None:
    """Create or update the process pool and (re)apply every deployment of prefect.yaml."""
    run_cli(["work-pool", "create", POOL, "--type", "process", "--overwrite"], env, "pool")
    # `daily` and `backfill` write the same DuckDB file: one flow run at a time in the whole pool.
    run_cli(["work-pool", "set-concurrency-limit", POOL, "1"], env, "pool concurrency limit")
    run_cli(["--no-prompt", "deploy", "--all"], env, "prefect deploy")


# --- serve / trigger / stop ----------------------------------------------------------------------


def _reuse(state: State, name: str, url: str | None, health: str, label: str) -> bool:
    """True if our `name` process still answers at `url`; else stop whatever is left of it."""
    pid = state.pid(name)
    if pid is not None and url and state.urls().get(name) == url:
        with contextlib.suppress(ServiceError):
            wait_http(health, timeout=5)
            print(f"{label:<18} already running (pid {pid}) at {url}")
            return True
    if pid is not None:
        stop_group(pid)
    return False


def _launch(
    state: State,
    name: str,
    cmd: list[str],
    env: dict[str, str],
    url: str,
    health: str,
    timeout: float,
) -> tuple[int, Path]:
    """Start `name`, record its pid and URL, wait until `health` answers; (pid, log)."""
    log = state.log(name)
    proc = start_process(cmd, env, log)
    state.record(name, proc.pid)
    state.save_urls(**{name: url})
    wait_http(health, timeout=timeout, proc=proc, log=log)
    return proc.pid, log


def _start_server(state: State, env: dict[str, str]) -> str:
    host = os.environ.get("PREFECT_SERVER_API_HOST", "127.0.0.1")
    port = int(os.environ.get("PREFECT_SERVER_API_PORT", DEFAULT_PORT))
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{client_host}:{port}/api"
    if _reuse(state, "server", url, f"{url}/health", "Prefect server"):
        return url
    if port_in_use(client_host, port):
        raise ServiceError(
            f"port {port} is taken by a process `make serve` did not start; "
            "stop it or choose another with PREFECT_SERVER_API_PORT=..."
        )
    cmd = [prefect_bin(), "server", "start", "--host", host, "--port", str(port)]
    pid, log = _launch(state, "server", cmd, env, url, f"{url}/health", timeout=180)
    print(f"Prefect server     started (pid {pid}) at {url}, log {log}")
    return url


def _start_api(state: State, env: dict[str, str]) -> str:
    url = state.urls().get("api")
    health = f"{url.rsplit('/api/', 1)[0]}/health" if url else ""
    if url and _reuse(state, "api", url, health, "Local Faker API"):
        return url
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v2"
    cmd = [sys.executable, "-m", "local_api", "--port", str(port), "--quiet"]
    pid, _ = _launch(state, "api", cmd, env, url, f"http://127.0.0.1:{port}/health", timeout=120)
    print(f"Local Faker API    started (pid {pid}) at {url}")
    return url


def _worker_env(env: dict[str, str], api_url: str) -> dict[str, str]:
    worker_env = {**env, "FAKER_API_URL": api_url}
    worker_env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "5")
    if not env.get("PII_HASH_KEY") and not env.get("PII_HASH_KEY_BLOCK"):
        from tasks.common.secrets import DEMO_KEY_FILE, ensure_demo_key

        # As `make run`: a random local key in the git-ignored .secrets/, never one in the repo.
        worker_env.setdefault("PII_HASH_KEY_FILE", str(ensure_demo_key(DEMO_KEY_FILE)))
    return worker_env


def _start_worker(state: State, env: dict[str, str], server_url: str, api_url: str) -> None:
    pid = state.pid("worker")
    if pid is not None and state.urls().get("worker_api") == api_url:
        print(f"Worker             already running (pid {pid}) on pool {POOL}")
        return
    if pid is not None:
        stop_group(pid)  # it points at an API that is gone
    log = state.log("worker")
    proc = start_process(
        [prefect_bin(), "worker", "start", "--pool", POOL], _worker_env(env, api_url), log
    )
    state.record("worker", proc.pid)
    state.save_urls(worker_api=api_url)
    _wait_worker_online(server_url, proc, log)
    print(f"Worker             started (pid {proc.pid}) on pool {POOL}, log {log}")


def _wait_worker_online(
    server_url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            resp = httpx.post(f"{server_url}/work_pools/{POOL}/workers/filter", json={}, timeout=5)
            if resp.status_code == 200 and any(w.get("status") == "ONLINE" for w in resp.json()):
                return
        if proc.poll() is not None:
            raise ServiceError(f"worker exited with {proc.returncode}{_tail(log)}")
        time.sleep(0.3)
    raise ServiceError(f"worker did not come online within {timeout:.0f}s{_tail(log)}")


def serve() -> int:
    """Start whatever of server, local API, pool, deployments and worker is not running yet."""
    state = State(prefect_home())
    env = base_env()
    server_url = _start_server(state, env)
    env = base_env(server_url)
    api_url = _start_api(state, env)
    create_pool_and_deploy(env)
    print(f"Work pool          {POOL} (process, concurrency 1); deployments from prefect.yaml")
    _start_worker(state, env, server_url, api_url)
    ui = server_url.removesuffix("/api")
    print()
    print(f"Prefect UI         {ui}  (Artifacts -> user-metrics-report)")
    print(f"Run it now         make trigger   (or: PREFECT_API_URL={server_url} \\")
    print(f"                   {prefect_bin()} deployment run '{DAILY}' --watch)")
    print("Stop everything    make stop")
    return 0


def trigger(extra: Sequence[str] = ()) -> int:
    """Run the daily deployment on the local service and wait; the exit code is Prefect's."""
    state = State(prefect_home())
    server_url = state.urls().get("server")
    if state.pid("server") is None or not server_url:
        print(
            "error: the local service is not running; start it with `make serve`", file=sys.stderr
        )
        return 2
    cmd = [prefect_bin(), "deployment", "run", DAILY, "--watch", "--watch-timeout", "1800", *extra]
    return subprocess.run(cmd, env=base_env(server_url), cwd=PROJECT_DIR, check=False).returncode


def stop() -> int:
    """Stop the worker, local API and server that `serve` recorded, by process id."""
    state = State(prefect_home())
    for name in ("worker", "api", "server"):
        pid = state.pid(name)
        if pid is None:
            print(f"{name:<8} not running")
        else:
            stop_group(pid)
            print(f"{name:<8} stopped (pid {pid})")
        state.forget(name)
    state.urls_file.unlink(missing_ok=True)
    return 0


def container_worker() -> int:
    """Container entry: wait for the server, create the pool, deploy, then become the worker."""
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        print("error: PREFECT_API_URL is not set", file=sys.stderr)
        return 2
    wait_http(f"{api.rstrip('/')}/health", timeout=300)
    env = base_env(api)
    env["PROJECT_DIR"] = os.environ.get("PROJECT_DIR", str(PROJECT_DIR))
    create_pool_and_deploy(env)
    # exec, so the container's stop signal reaches the worker itself.
    os.execve(prefect_bin(), [prefect_bin(), "worker", "start", "--pool", POOL], env)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: serve | trigger [prefect deployment run options] | stop | worker."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=("serve", "trigger", "stop", "worker"))
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "trigger":
        parser.error(f"unexpected arguments: {' '.join(extra)}")
    try:
        if args.command == "serve":
            return serve()
        if args.command == "trigger":
            return trigger(extra)
        if args.command == "stop":
            return stop()
        return container_worker()
    except (ServiceError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
