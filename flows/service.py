"""The pipeline as a local Prefect service: server, local Faker API, work pool, deployments, worker.

python -m flows.service serve     start what is not running yet (idempotent), print the UI URL
python -m flows.service trigger   run 'user-metrics-pipeline/daily' and wait; non-zero unless done
python -m flows.service stop      stop what `serve` started, by the process ids it recorded
python -m flows.service worker    container entry: pool, deployments, alerts, then the worker

Prefect's CLI does the Prefect work (server, pool, deploy, worker, deployment runs),
flows/operations.py applies the alerts and the request budget, flows/processes.py keeps the
processes' pids and logs in `$PREFECT_HOME/service/`. With PREFECT_SERVER_API_AUTH_STRING set,
every client (CLI, worker, flow runs) sends it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import yaml

from flows.processes import PROJECT_DIR, ServiceError, ServiceState, free_port, responds, wait_until
from flows.server import (
    LABELS,
    START_SECONDS,
    base_env,
    client_settings,
    ensure_process,
    ensure_server,
    prefect_bin,
    running_server,
)
from tasks.common.secrets import DEMO_KEY_FILE, ensure_demo_key, key_configured, without_key

POOL = "faker-pool"
DAILY = "user-metrics-pipeline/daily"
# How long `trigger` watches a run before it says the run goes on without it, and how often it
# asks for the run's state.
WATCH_TIMEOUT_SECONDS = 1800
FOLLOW_POLL_SECONDS = 0.5
# prefect.yaml puts the backfill deployments on this queue; the daily one is on the pool's
# `default` queue (priority 1), whose runs a worker picks first when both have some waiting.
BACKFILL_QUEUE = "backfill"
BACKFILL_PRIORITY = 10


def run(args: Sequence[str], env: Mapping[str, str], what: str) -> str:
    """Run a command to completion (a `prefect` one unless it starts with python); its output."""
    cmd = list(args) if args[0] == sys.executable else [prefect_bin(), *args]
    done = subprocess.run(
        cmd, env=dict(env), cwd=PROJECT_DIR, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        raise ServiceError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def set_up(env: Mapping[str, str]) -> None:
    """Pool, queues, alerts, request budget, DuckDB limit, deployments; each step idempotent."""
    run(["work-pool", "create", POOL, "--type", "process", "--overwrite"], env, "work pool")
    # Runs share the pool: they fetch side by side and take the DuckDB file in turn through its
    # own concurrency limit (flows/operations.py), so the pool itself has no limit.
    run(["work-pool", "clear-concurrency-limit", POOL], env, "pool concurrency limit")
    _ensure_queue(env, BACKFILL_QUEUE, BACKFILL_PRIORITY)
    print(run([sys.executable, "-m", "flows.operations"], env, "alerts").rstrip())
    run(["--no-prompt", "deploy", *pool_deployments()], env, "prefect deploy")
    print(
        f"Work pool          {POOL} (process): daily on queue 'default', backfills on "
        f"{BACKFILL_QUEUE!r} (lower priority); deployments from prefect.yaml"
    )


def pool_deployments() -> list[str]:
    """`--name` options for prefect.yaml's deployments on POOL: the Docker pool's deployment
    is deployed by hand, where that pool exists (`prefect deploy` refuses a missing pool)."""
    config = yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text(encoding="utf-8"))
    names = [d["name"] for d in config["deployments"] if d["work_pool"]["name"] == POOL]
    return [option for name in names for option in ("--name", name)]


def _ensure_queue(env: Mapping[str, str], name: str, priority: int) -> None:
    """The pool's work queue `name` with `priority`, created or updated through Prefect's client."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with _client_settings(env), get_client(sync_client=True) as client:
        try:
            queue = client.read_work_queue_by_name(name, work_pool_name=POOL)
        except ObjectNotFound:
            client.create_work_queue(name, priority=priority, work_pool_name=POOL)
            return
        if queue.priority != priority:
            client.update_work_queue(queue.id, priority=priority)


@contextlib.contextmanager
def _client_settings(env: Mapping[str, str]) -> Iterator[None]:
    """Prefect's client settings for the server in `env` (with its credentials)."""
    from prefect.settings import temporary_settings

    with temporary_settings(client_settings(env["PREFECT_API_URL"], env)):
        yield


def _worker_online(env: Mapping[str, str]) -> bool:
    """Whether the pool has a worker online, asked through Prefect's client (with credentials)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkPoolStatus

    with (
        _client_settings(env),
        get_client(sync_client=True) as client,
        contextlib.suppress(Exception),  # not up yet: asked again
    ):
        return client.read_work_pool(POOL).status == WorkPoolStatus.READY
    return False


def _start_worker(state: ServiceState, env: dict[str, str], api: str) -> None:
    if state.pid("worker") is not None and state.urls().get("worker_api") == api:
        print(f"{LABELS['worker']:<18} already running (pid {state.pid('worker')}) on pool {POOL}")
        return
    state.stop("worker")  # it points at an API that is gone
    worker_env = {**env, "FAKER_API_URL": api}
    # A run waits for the worker's next poll before anything starts: a poll a second (one small
    # query to a local server) keeps that wait short where users watch the run.
    worker_env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "1")
    if not key_configured(env):
        # As `make run`: a random local key in the git-ignored .secrets/, never one in the repo.
        worker_env.setdefault("PII_HASH_KEY_FILE", str(ensure_demo_key(DEMO_KEY_FILE)))
    cmd = [prefect_bin(), "worker", "start", "--pool", POOL]
    proc = state.launch("worker", cmd, worker_env, worker_api=api)
    log = state.log("worker")
    wait_until(lambda: _worker_online(env), "worker", START_SECONDS["worker"], proc, log)
    print(f"{LABELS['worker']:<18} started (pid {proc.pid}) on pool {POOL}, log {log}")


def serve() -> int:
    """Start whatever of server, local API, pool, deployments and worker is not running yet."""
    env = base_env()
    state = ServiceState(Path(env["PREFECT_HOME"]))
    # Only the worker (and the flow runs it starts) may need the key: the rest never get it.
    server, line = ensure_server(state, env)
    print(line)
    env.setdefault("PREFECT_UI_URL", server.removesuffix("/api"))  # the links in alerts
    env = base_env(server)
    api = state.urls().get("api") or f"http://127.0.0.1:{free_port()}/api/v2"
    cmd = [sys.executable, "-m", "local_api", "--port", api.split(":")[2].split("/")[0], "--quiet"]
    health = api.replace("/api/v2", "/health")
    print(ensure_process(state, "api", cmd, without_key(env), api, health))
    set_up(without_key(env))
    _start_worker(state, env, api)
    print(f"\nPrefect UI         {server.removesuffix('/api')}  (Artifacts -> user-metrics-report)")
    print(f"Run it now         make trigger   (or: PREFECT_API_URL={server} \\")
    print(f"                   {prefect_bin()} deployment run '{DAILY}' --watch)")
    print(f"Logs               {state.dir}/{{server,api,worker}}.log")
    print("Stop everything    make stop")
    return 0


def _not_running(state: ServiceState, env: Mapping[str, str]) -> str:
    """Why `trigger` has no server of this service to use, in one line."""
    url, pid = state.urls().get("server"), state.pid("server")
    if pid is None:
        return (
            f"the local service is not running (no live server recorded in {state.dir}); "
            "start it with `make serve`"
        )
    if not responds(f"{url}/health"):
        return (
            f"the local service's server (pid {pid}) does not answer at {url}; "
            f"see {state.log('server')}, then `make stop` and `make serve`"
        )
    return (
        f"the Prefect server answering at {url} is not this PREFECT_HOME's ({env['PREFECT_HOME']}) "
        "or refuses our credentials; run `make stop` and `make serve`"
    )


def trigger(extra: Sequence[str] = ()) -> int:
    """Run the daily deployment on the local service and wait: 0 once it completed, 1 if it
    ended otherwise, Prefect's code if the run was refused."""
    env = base_env()
    state = ServiceState(Path(env["PREFECT_HOME"]))
    server = running_server(state, env)
    if server is None:
        print(f"error: {_not_running(state, env)}", file=sys.stderr)
        return 2
    # `prefect deployment run` creates the run (its --param parsing and refusals as users know
    # them); the run is then followed here, through Prefect's client, until its final state
    # (`--watch` waits a few seconds more for log lines this server never streams).
    cmd = [prefect_bin(), "deployment", "run", DAILY, *extra]
    created = subprocess.run(
        cmd, env=base_env(server), cwd=PROJECT_DIR, stdout=subprocess.PIPE, text=True, check=False
    )
    print(created.stdout, end="", flush=True)
    found = re.search(r"UUID: ([0-9a-f-]{36})", created.stdout)
    if created.returncode != 0 or found is None:
        return created.returncode or 1
    try:
        return _follow(uuid.UUID(found.group(1)), base_env(server))
    except KeyboardInterrupt:
        print(f"\nstopped watching; the run goes on: {found.group(1)}", file=sys.stderr)
        return 130


def _follow(flow_run_id: uuid.UUID, env: Mapping[str, str]) -> int:
    """Print the run's state as it changes until it is final; 0 if it completed."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + WATCH_TIMEOUT_SECONDS
    shown = None
    with _client_settings(env), get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.name != shown:
                shown = state.name
                print(
                    f"{time.strftime('%H:%M:%S')} flow run {flow_run_id}: {state.name}", flush=True
                )
            if state is not None and state.is_final():
                break
            if time.monotonic() >= deadline:
                print(
                    f"error: flow run {flow_run_id} had not ended after {WATCH_TIMEOUT_SECONDS} s;"
                    " it goes on: see it in the Prefect UI",
                    file=sys.stderr,
                )
                return 1
            time.sleep(FOLLOW_POLL_SECONDS)  # a poll of the state: one small local request
    if state.is_completed():
        print(f"Flow run finished successfully in {state.name!r}.")
        return 0
    print(f"Flow run finished in state {state.name!r}: {state.message or ''}", file=sys.stderr)
    return 1


def stop() -> int:
    """Stop the worker, local API and server that `serve` recorded, by process id."""
    state = ServiceState(Path(base_env()["PREFECT_HOME"]))
    for name in ("worker", "api", "server"):
        pid = state.stop(name)
        print(f"{name:<8} {'not running' if pid is None else f'stopped (pid {pid})'}")
    state.urls_file.unlink(missing_ok=True)
    return 0


def container_worker() -> int:
    """Container entry: wait for the server, set everything up, then become the worker."""
    env = base_env()
    server = env.get("PREFECT_API_URL")
    if not server:
        print("error: PREFECT_API_URL is not set", file=sys.stderr)
        return 2
    log = ServiceState(Path(env["PREFECT_HOME"])).log("worker")
    wait_until(lambda: responds(f"{server.rstrip('/')}/health"), "server", 300, None, log)
    set_up(env)
    # exec, so the container's stop signal reaches the worker itself.
    # --with-healthcheck: /health on PREFECT_WORKER_WEBSERVER_PORT, for the compose healthcheck.
    worker = [prefect_bin(), "worker", "start", "--pool", POOL, "--with-healthcheck"]
    os.execve(prefect_bin(), worker, env)


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
    commands = {"serve": serve, "stop": stop, "worker": container_worker}
    try:
        return trigger(extra) if args.command == "trigger" else commands[args.command]()
    except (ServiceError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
