"""The local service's processes: started in sessions of their own with their logs in files,
their pids and URLs kept under `$PREFECT_HOME/service/`, waited for, and stopped as groups.

Prefect's `prefect server start --background` would do part of this for the server, but it ties
the server's output to the pipes of the CLI that started it: the server died on its first log
line once that CLI exited (Prefect 3.9.1). So the service starts its processes itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from tasks.storage.recovery import process_alive

PROJECT_DIR = Path(__file__).resolve().parents[1]
# Marks in /proc/<pid>/cmdline that identify each of our processes, so a recycled pid is never hit.
COMMAND_MARKS = {"server": "server", "api": "local_api", "worker": "worker"}


class ServiceError(RuntimeError):
    """A step of the local service failed; the message says which and where its log is."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on `host` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group, again (a worker shuts down on the second), then SIGKILL."""
    for sig, wait in (
        (signal.SIGTERM, timeout),
        (signal.SIGTERM, timeout / 2),
        (signal.SIGKILL, 5),
    ):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            if not process_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)  # children of the group may linger
                return
            time.sleep(0.1)


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
    return f"\n--- last lines of {log} ---\n" + "\n".join(lines) if lines else ""


def wait_until(ready: Callable[[], bool], what: str, timeout: float, proc: Any, log: Path) -> None:
    """Poll `ready` until it holds; fail early, with the log's tail, if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what}: process exited with {proc.returncode}{_tail(log)}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} did not come up within {timeout:.0f}s{_tail(log)}")
        time.sleep(0.3)


def responds(url: str) -> bool:
    """Whether `url` responds 200 (health endpoints need no credentials)."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=2).status_code == 200
    return False


class ServiceState:
    """Pid files, logs and URLs of the local service under `$PREFECT_HOME/service`."""

    def __init__(self, prefect_home: Path) -> None:
        self.dir = prefect_home / "service"
        self.urls_file = self.dir / "urls.json"

    def log(self, name: str) -> Path:
        """Log file of one process."""
        return self.dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        """The recorded pid if that process still runs and is still ours, else None."""
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.dir / f"{name}.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline")
            ours = not cmdline.exists() or COMMAND_MARKS[name] in cmdline.read_text(errors="ignore")
            return pid if process_alive(pid) and ours else None  # a recycled pid is not ours
        return None

    def urls(self) -> dict[str, str]:
        """The recorded URLs (`server`, `api`, `worker_api`), empty if none."""
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(self.urls_file.read_text()))
        return {}

    def launch(self, name: str, cmd: Sequence[str], env: Mapping[str, str], **urls: str) -> Any:
        """Start `name` in a session of its own (its group is stopped as one), log to a file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.log(name).open("ab") as out:
            proc = subprocess.Popen(
                list(cmd),
                env=dict(env),
                cwd=PROJECT_DIR,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        self.urls_file.write_text(json.dumps({**self.urls(), **urls}, indent=2) + "\n")
        return proc

    def stop(self, name: str) -> int | None:
        """Stop `name` if it runs; forget its pid and URL; the pid it had."""
        pid = self.pid(name)
        if pid is not None:
            stop_group(pid)
        (self.dir / f"{name}.pid").unlink(missing_ok=True)
        urls = self.urls()
        if urls.pop(name, None) is not None:  # never left pointing at what another process serves
            self.urls_file.write_text(json.dumps(urls, indent=2) + "\n")
        return pid
