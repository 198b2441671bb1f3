"""Wall times as users feel them: `make run` first and repeat, and a 1,000-record CLI run.

Each is the process a user starts (`python -m flows.local_demo`, what `make run` runs after its
set-up, and `python -m flows.user_metrics`), timed from start to exit, in a fresh Prefect home
with its own port: the first run starts the local Prefect server in the background, the later
ones reuse it, as on a user's machine. The server is stopped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flows.processes import free_port

ROOT = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds from start to exit of `cmd`; fails loudly if it fails."""
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:4])} failed: {done.stderr.strip()[-500:]}")
    return round(seconds, 1)


def measure(api_url: str) -> dict[str, Any]:
    """`make run` (30,000 records, the local demo) first and repeat; a 1,000-record CLI run
    against `api_url` on the same, already running, server."""
    with tempfile.TemporaryDirectory(prefix="bench-wall-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        env.update(
            PREFECT_HOME=f"{tmp}/prefect",
            PREFECT_SERVER_API_PORT=str(free_port()),
            DATA_LAKE_DIR=f"{tmp}/lake",
            DUCKDB_PATH=f"{tmp}/db/faker.duckdb",
            PII_HASH_KEY="bench-key-0123456789abcdef",
        )
        demo = [sys.executable, "-m", "flows.local_demo"]
        cli = [sys.executable, "-m", "flows.user_metrics", "--api-url", api_url, "--records"]
        try:
            return {
                "make_run_first_s": _timed(demo, env),
                "make_run_repeat_s": _timed(demo, env),
                "cli_1k_repeat_s": _timed([*cli, "1000", "--run-date", "2026-01-02"], env),
            }
        finally:
            stop = [sys.executable, "-m", "flows.service", "stop"]
            subprocess.run(stop, cwd=ROOT, env=env, capture_output=True, check=False)
