"""Wall times as users feel them: `make run` first and repeat, a 1,000-record CLI run, and a
30,000-record deployment run on a warm worker of the local service.

Each is the process a user starts (`python -m flows.local_demo`, what `make run` runs after its
set-up, and `python -m flows.cli`), timed from start to exit, in a fresh Prefect home
with its own port: the first run starts the local Prefect server in the background, the later
ones reuse it, as on a user's machine. The server is stopped at the end.

The deployment runs (`measure_deployment`, alone: `python -m bench.wall`) start the local service
as `make serve` does, in a fresh Prefect home on a free port, then time `prefect deployment run
... --watch` and `make trigger` from start to exit, split by the run's server-side state history:
command start to run created, worker pick-up, the flow-run process's start, imports and pull
step, the flow body, and the command noticing the end.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from flows.processes import ServiceState, free_port

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
        cli = [sys.executable, "-m", "flows.cli", "--api-url", api_url, "--records"]
        try:
            return {
                "make_run_first_s": _timed(demo, env),
                "make_run_repeat_s": _timed(demo, env),
                "cli_1k_repeat_s": _timed([*cli, "1000", "--run-date", "2026-01-02"], env),
            }
        finally:
            stop = [sys.executable, "-m", "flows.service", "stop"]
            subprocess.run(stop, cwd=ROOT, env=env, capture_output=True, check=False)


# --- a deployment run, from the command to Completed ----------------------------------------

DAILY = "user-metrics-pipeline/daily"
# The two ways users start the daily deployment and wait for it.
COMMANDS = {
    "prefect": "`prefect deployment run '" + DAILY + "' --watch`",
    "trigger": "`make trigger` (`python -m flows.service trigger`)",
}
# Where a run's wait goes, in order: (key, words), each from one timestamp to the next (the
# command's own clock at its start and exit, the server's state history between them).
SEGMENTS = (
    ("cli_to_created", "command start to run created"),
    ("created_to_pending", "worker pick-up"),
    ("pending_to_running", "process start, imports, pull step"),
    ("running_to_completed", "flow body"),
    ("completed_to_exit", "command noticing the end"),
)
STATE_ORDER = ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED")


def breakdown(started: float, exited: float, states: list[tuple[str, float]]) -> dict[str, float]:
    """Seconds of each SEGMENTS step of one run, and the total: `started`/`exited` are the
    command's epoch seconds, `states` the run's (state type, epoch seconds) history (the first
    state of each type counts); fails unless the run reached COMPLETED."""
    first: dict[str, float] = {}
    for kind, at in sorted(states, key=lambda state: state[1]):
        first.setdefault(kind, at)
    missing = [kind for kind in STATE_ORDER if kind not in first]
    if missing:
        raise RuntimeError(f"the flow run's state history has no {', '.join(missing)} state")
    marks = [started, *(first[kind] for kind in STATE_ORDER), exited]
    steps = itertools.pairwise(marks)
    split = {key: round(b - a, 2) for (key, _), (a, b) in zip(SEGMENTS, steps, strict=True)}
    return {**split, "total": round(exited - started, 2)}


def median_of(runs: list[dict[str, float | None]]) -> dict[str, float]:
    """The median of each figure over `runs` (figures missing from a run are left out)."""
    keys = [key for key in runs[0] if all(run.get(key) is not None for run in runs)]
    return {key: round(statistics.median(float(run[key] or 0) for run in runs), 2) for key in keys}


def _run_record(server: str, flow_run_id: str) -> tuple[list[tuple[str, float]], float | None]:
    """The run's state history as (state type, epoch seconds), and how long its
    `validate_masked` task ran (it waits there for GX's start-up in the validator process)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    run_id = uuid.UUID(flow_run_id)
    with temporary_settings({PREFECT_API_URL: server}), get_client(sync_client=True) as client:
        states = client.read_flow_run_states(run_id)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    history = [(state.type.value, state.timestamp.timestamp()) for state in states]
    waits = [
        (task.end_time - task.start_time).total_seconds()
        for task in tasks
        if task.name.startswith("validate_masked") and task.start_time and task.end_time
    ]
    return history, round(waits[0], 2) if waits else None


def _has_children(pid: int) -> bool:
    """Whether any thread of `pid` has a child process running."""
    found = False
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):  # a thread that just ended
            found = found or bool(children.read_text().strip())
    return found


def _children_cpu(pid: int) -> float:
    """CPU seconds of the ended children of `pid` (its flow-run processes, with the validator
    and browser each started), read once no child is left running."""
    deadline = time.monotonic() + 60
    while _has_children(pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # a flow-run process exits a moment after its final state
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # cutime and cstime (fields 16 and 17 of proc(5)), in clock ticks.
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _deployment_run(
    how: str, server: str, env: dict[str, str], records: int, worker_pid: int
) -> dict[str, float | None]:
    """One run of the daily deployment started as `how` (COMMANDS), timed from the command's
    start to its exit and split by the run's state history; fails loudly unless it completed."""
    if how == "prefect":
        cmd = [str(Path(sys.executable).with_name("prefect")), "deployment", "run", DAILY]
        cmd += ["--param", f"records={records}", "--watch", "--watch-timeout", "600"]
        env = {**env, "PREFECT_API_URL": server}
    else:
        cmd = [sys.executable, "-m", "flows.service", "trigger", "--param", f"records={records}"]
    cpu_before = _children_cpu(worker_pid)
    started = time.time()
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=900
    )
    exited = time.time()
    output = done.stdout + done.stderr
    found = re.search(r"UUID: ([0-9a-f-]{36})", output)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{how}: the run failed ({done.returncode}): {output.strip()[-800:]}")
    states, gx_wait = _run_record(server, found.group(1))
    return {
        **breakdown(started, exited, states),
        "validate_masked": gx_wait,
        "flow_run_cpu": round(_children_cpu(worker_pid) - cpu_before, 1),
    }


def measure_deployment(records: int = 30_000, runs: int = 3) -> dict[str, Any]:
    """`runs` runs of the daily deployment with `records` per COMMANDS way, taken in turns, on a
    warm worker of the local service started as `make serve` starts it (fresh Prefect home,
    free port), after one warm-up run."""
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        # The service's own defaults, not this shell's Prefect settings or key.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PII_HASH"))}
        env.update(
            PREFECT_HOME=f"{tmp}/prefect",
            PREFECT_SERVER_API_HOST="127.0.0.1",
            PREFECT_SERVER_API_PORT=str(free_port()),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DATA_LAKE_DIR=f"{tmp}/lake",
            DUCKDB_PATH=f"{tmp}/db/faker.duckdb",
            PII_HASH_KEY="bench-key-0123456789abcdef",
        )
        service = [sys.executable, "-m", "flows.service"]
        timed: dict[str, list[dict[str, float | None]]] = {how: [] for how in COMMANDS}
        try:
            _timed([*service, "serve"], env)
            state = ServiceState(Path(env["PREFECT_HOME"]))
            server, worker = state.urls()["server"], state.pid("worker")
            if worker is None:
                raise RuntimeError("`flows.service serve` left no worker running")
            # The first run pays what a warm worker has paid already (the API's page cache,
            # DuckDB's schema, the OS's file cache): not what users wait for on each run.
            warm_up = _deployment_run("prefect", server, env, records, worker)
            for _ in range(runs):
                for how in COMMANDS:  # in turns, so both see the machine's load alike
                    timed[how].append(_deployment_run(how, server, env, records, worker))
        finally:
            subprocess.run([*service, "stop"], cwd=ROOT, env=env, capture_output=True, check=False)
    return {
        "records": records,
        "warm_up": warm_up,
        "runs": timed,
        "median": {how: median_of(done) for how, done in timed.items()},
    }


def deployment_markdown(result: dict[str, Any]) -> str:
    """The deployment-run figures as one paragraph of bench/results.md."""
    lines = [
        f"A {result['records']:,}-record run of the daily deployment on a warm worker of the "
        f"local service (`make serve`), from the command's start to its exit, median of "
        f"{len(next(iter(result['runs'].values())))} taken in turns; the split comes from the "
        "run's state history."
    ]
    for how, median in result["median"].items():
        walls = ", ".join(f"{run['total']:.1f}" for run in result["runs"][how])
        split = "; ".join(f"{words} {median[key]:.1f} s" for key, words in SEGMENTS)
        extra = []
        if (wait := median.get("validate_masked")) is not None:
            extra.append(f"of the flow body, validate_masked (waiting for GX) {wait:.1f} s")
        if (cpu := median.get("flow_run_cpu")) is not None:
            extra.append(f"CPU of the flow-run processes {cpu:.1f} s")
        lines.append(
            f"- {COMMANDS[how]}: **{median['total']:.1f} s** ({walls}): {split}"
            + (f" ({'; '.join(extra)})" if extra else "")
            + "."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.wall`: the deployment-run figures alone, printed (results.md untouched)."""
    parser = argparse.ArgumentParser(prog="python -m bench.wall", description=main.__doc__)
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per command")
    args = parser.parse_args(argv)
    result = measure_deployment(args.records, args.runs)
    print(json.dumps(result, indent=2))
    print(deployment_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
