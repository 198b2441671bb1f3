"""What can be checked of the container and deployment files without a container engine."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SECRET_NAMES = re.compile(r"(PASSWORD|SECRET|TOKEN|KEY|AUTH)", re.IGNORECASE)
# A value that only refers to the environment: ${VAR}, ${VAR:-}, ${VAR:?message} and nothing else.
ENV_REFERENCE = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


@pytest.fixture(scope="module")
def prefect_yaml() -> dict[str, Any]:
    """prefect.yaml, parsed."""
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _assert_module_exists(argv: list[str]) -> None:
    """`python -m pkg.mod ...` in a command must name a module of this project."""
    assert argv[:2] == ["python", "-m"], argv
    module = argv[2]
    assert (ROOT / module.replace(".", "/")).with_suffix(".py").is_file() or (
        ROOT / module.replace(".", "/") / "__main__.py"
    ).is_file(), f"{module} is not in the project"


def test_compose_has_the_services_with_healthchecks(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "local-api", "worker"}
    for name in ("postgres", "prefect-server", "local-api"):
        check = services[name]["healthcheck"]["test"]
        assert check[0] in ("CMD", "CMD-SHELL") and len(check) > 1, name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(services["prefect-server"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["local-api"]["healthcheck"]["test"])


def test_compose_services_wait_for_healthy_dependencies(compose):
    services = compose["services"]
    expected = {
        "prefect-server": {"postgres"},
        "worker": {"prefect-server", "local-api"},
    }
    for name, deps in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == deps, name
        assert all(d["condition"] == "service_healthy" for d in depends.values()), name
    for service in services.values():
        # Never a sleep to wait for another container.
        assert "sleep" not in " ".join(map(str, service.get("command", [])))


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}` and `${VAR:-default}` substitution, from `env` only."""
    return re.sub(
        r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}",
        lambda m: env.get(m[1]) or (m[2] or ""),
        text,
    )


def _published(service: dict[str, Any], env: dict[str, str]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of every port a service publishes."""
    published = []
    for spec in service.get("ports", []):
        host, host_port, container_port = _interpolate(spec, env).rsplit(":", 2)
        published.append((host, int(host_port), int(container_port)))
    return published


def test_compose_ports_bind_loopback_by_default(compose):
    services = compose["services"]
    # Only the UI/API server and the local API are reached from the host; the database and the
    # worker publish nothing.
    assert {name for name, s in services.items() if s.get("ports")} == {
        "prefect-server",
        "local-api",
    }
    for name in ("prefect-server", "local-api"):
        command = services[name]["command"]
        listens = re.search(r"--port[ =]?(\d+)", " ".join(map(str, command)))
        assert listens, name
        for host, _, container_port in _published(services[name], {}):
            assert ipaddress.ip_address(host).is_loopback, (name, host)
            assert container_port == int(listens[1]), name
        # BIND_ADDRESS is the one knob that exposes them.
        assert {host for host, _, _ in _published(services[name], {"BIND_ADDRESS": "0.0.0.0"})} == {
            "0.0.0.0"
        }, name


def test_compose_server_uses_postgres_and_a_browser_reachable_api(compose):
    env = _env(compose["services"]["prefect-server"])
    assert env["PREFECT_SERVER_DATABASE_DRIVER"] == "postgresql+asyncpg"
    assert (env["PREFECT_SERVER_DATABASE_HOST"], env["PREFECT_SERVER_DATABASE_PORT"]) == (
        "postgres",
        "5432",
    )
    assert env["PREFECT_UI_API_URL"].endswith("localhost:4200/api}")
    command = " ".join(compose["services"]["prefect-server"]["command"])
    assert "exec prefect server start --host 0.0.0.0 --port 4200" in command


def test_compose_secrets_are_files_never_environment(compose):
    """The key and the database password reach only the services that need them, as files."""
    declared = compose["secrets"]
    assert set(declared) == {"pii_hash_key", "postgres_password"}
    assert all(set(spec) == {"file"} for spec in declared.values())
    services = compose["services"]
    assert services["worker"]["secrets"] == ["pii_hash_key"]
    assert _env(services["worker"])["PII_HASH_KEY_FILE"] == "/run/secrets/pii_hash_key"
    assert _env(services["postgres"])["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert services["prefect-server"]["secrets"] == ["postgres_password"]
    # Prefect reads no password file: the server's shell reads it into the one process that
    # needs it, and Prefect builds its connection URL from the parts.
    command = " ".join(services["prefect-server"]["command"])
    assert 'PREFECT_SERVER_DATABASE_PASSWORD="$$(cat /run/secrets/postgres_password)"' in command
    assert command.index("PASSWORD") < command.index("exec prefect server start")
    assert "secrets" not in services["local-api"]
    for name, service in services.items():
        env = _env(service)
        assert not {"PII_HASH_KEY", "POSTGRES_PASSWORD"} & set(env), name
        assert not any("POSTGRES_PASSWORD}" in value for value in env.values()), name


def test_compose_commands_exist_in_the_project(compose):
    services = compose["services"]
    _assert_module_exists(services["local-api"]["command"])
    _assert_module_exists(services["worker"]["command"])
    assert services["worker"]["command"][-1] == "worker"
    from flows.service import main

    with pytest.raises(SystemExit):  # argparse knows the subcommand: --help exits 0
        main(["worker", "--help"])
    env = _env(services["worker"])
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["FAKER_API_URL"].endswith("http://local-api:8000/api/v2}")
    assert env["PROJECT_DIR"] == "/app"


def test_compose_worker_applies_alerts_and_the_request_budget_as_make_serve_does(compose):
    """The worker's command runs the same set-up as `make serve` (flows.service.set_up), which
    applies automations.yaml and the shared request budget from the worker's environment."""
    import inspect

    import flows.service

    env = _env(compose["services"]["worker"])
    for name in ("ALERT_WEBHOOK_URL", "REQUESTS_PER_MINUTE", "PREFECT_API_AUTH_STRING"):
        assert env[name].startswith("${"), name  # from the .env of the compose project
    assert "flows.operations" in inspect.getsource(flows.service.set_up)
    assert "set_up(env)" in inspect.getsource(flows.service.container_worker)
    assert "set_up(without_key(env))" in inspect.getsource(flows.service.serve)
    server_env = _env(compose["services"]["prefect-server"])
    assert server_env["PREFECT_UI_URL"].endswith("localhost:4200}")  # alert links


def test_compose_volumes_for_lake_and_database(compose):
    volumes = compose["services"]["worker"]["volumes"]
    assert "data_lake:/app/data_lake" in volumes and "db:/app/db" in volumes
    assert {"data_lake", "db", "postgres"} <= set(compose["volumes"])


def test_no_secret_values_in_compose(compose):
    for name, service in compose["services"].items():
        for key, value in _env(service).items():
            if SECRET_NAMES.search(key) and not key.endswith("_FILE"):
                assert ENV_REFERENCE.match(value), f"{name}.{key} holds a literal: {value!r}"


def test_no_secret_values_in_dockerfile(dockerfile):
    for line in dockerfile:
        if line.startswith(("ENV", "ARG")):
            for key in re.findall(r"([A-Z_][A-Z0-9_]*)=", line):
                assert not SECRET_NAMES.search(key), line


def test_dockerfile_builds_the_project_as_designed(dockerfile):
    assert re.match(r"FROM python:3\.11-slim\b", dockerfile[0])
    runs = " ".join(line for line in dockerfile if line.startswith("RUN"))
    assert "apt-get install -y --no-install-recommends chromium" in runs
    assert "pip install --no-cache-dir uv" in runs
    assert "uv sync --frozen --no-dev" in runs
    users = [line.split()[1] for line in dockerfile if line.startswith("USER")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("ENV") and "PROJECT_DIR=/app" in line for line in dockerfile)
    copied = [src for line in dockerfile if line.startswith("COPY") for src in line.split()[1:-1]]
    for src in copied:
        assert (ROOT / src).exists(), f"COPY of {src}, which is not in the project"
    needed_files = ("flows/", "tasks/", "local_api/", "expectations/", "prefect.yaml", "uv.lock")
    for needed in (*needed_files, "automations.yaml"):
        assert needed in copied, needed
    cmd = next(line for line in reversed(dockerfile) if line.startswith("CMD"))
    _assert_module_exists(yaml.safe_load(cmd.removeprefix("CMD")))


def test_dockerignore_keeps_secrets_and_state_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".secrets", ".prefect", ".venv", ".git", "data_lake", "db"):
        assert entry in ignored, entry


def test_prefect_yaml_deployments(prefect_yaml):
    import importlib

    from prefect import Flow

    deployments = {d["name"]: d for d in prefect_yaml["deployments"]}
    assert set(deployments) == {"daily", "backfill", "range"}
    for deployment in deployments.values():
        path, name = deployment["entrypoint"].split(":")
        assert path.startswith("flows/") and (ROOT / path).is_file()
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
        assert isinstance(flow, Flow), deployment["entrypoint"]
        # A hung run cannot block the schedule; no parameter defaults here, an unset parameter
        # takes the worker's setting of the same name (FAKER_RECORDS, ...).
        assert flow.timeout_seconds and flow.timeout_seconds >= 600
        assert "parameters" not in deployment
        assert deployment["work_pool"]["name"] == "faker-pool"
        assert deployment["concurrency_limit"] == 1
    from flows.service import BACKFILL_QUEUE

    queues = {name: d["work_pool"]["work_queue_name"] for name, d in deployments.items()}
    assert queues == {"daily": "default", "backfill": BACKFILL_QUEUE, "range": BACKFILL_QUEUE}
    [schedule] = deployments["daily"]["schedules"]
    assert schedule["timezone"] == "UTC" and len(schedule["cron"].split()) == 5
    assert not deployments["backfill"].get("schedules") and not deployments["range"]["schedules"]
    assert deployments["range"]["entrypoint"].endswith(":deployed_backfill")
    # No whole-run retry: a page range retries itself (tests/flows/test_range_retries.py).
    from flows.user_metrics import deployed_backfill, deployed_pipeline

    assert (deployed_pipeline.retries, deployed_backfill.retries) == (0, 0)


def test_prefect_yaml_pull_step_enters_the_folder_deployed_from(prefect_yaml):
    """No environment variable to set: the folder `prefect deploy` runs in (/app in the image)."""
    [build] = prefect_yaml["build"]
    assert build["prefect.deployments.steps.run_shell_script"]["script"] == "pwd"
    step_id = build["prefect.deployments.steps.run_shell_script"]["id"]
    [step] = prefect_yaml["pull"]
    directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
    assert directory == "{{ " + step_id + ".stdout }}"


def test_flow_runs_get_the_returning_arrow_pool(prefect_yaml, dockerfile):
    """pyarrow reads ARROW_DEFAULT_MEMORY_POOL when it loads: it must be in the run's env."""
    for deployment in prefect_yaml["deployments"]:
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env["ARROW_DEFAULT_MEMORY_POOL"] == "jemalloc"
    [env_line] = [line for line in dockerfile if line.startswith("ENV PROJECT_DIR=")]
    assert "ARROW_DEFAULT_MEMORY_POOL=jemalloc" in env_line.split()
    makefile = (ROOT / "Makefile").read_text()
    assert "export ARROW_DEFAULT_MEMORY_POOL ?= jemalloc" in makefile
