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
    for name in services:
        check = services[name]["healthcheck"]["test"]
        assert check[0] in ("CMD", "CMD-SHELL") and len(check) > 1, name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(services["prefect-server"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["local-api"]["healthcheck"]["test"])


def _worker_health_url(compose: dict[str, Any]) -> str:
    """The URL the worker's healthcheck asks, checked against where the worker serves it."""
    worker = compose["services"]["worker"]
    [url] = re.findall(r"http://[^'\"]+", " ".join(worker["healthcheck"]["test"]))
    env = _env(worker)
    host, port = env["PREFECT_WORKER_WEBSERVER_HOST"], env["PREFECT_WORKER_WEBSERVER_PORT"]
    assert url == f"http://{host}:{port}/health"
    assert ipaddress.ip_address(host).is_loopback  # asked from inside the container only
    return url


def test_compose_worker_starts_with_the_healthcheck_its_check_asks(compose, monkeypatch, tmp_path):
    """The container's worker is started with --with-healthcheck, serving what the check asks."""
    import flows.service

    _worker_health_url(compose)
    started: list[list[str]] = []
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect-server:4200/api")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setattr(flows.service, "wait_until", lambda *args: None)
    monkeypatch.setattr(flows.service, "set_up", lambda env: None)
    monkeypatch.setattr(flows.service.os, "execve", lambda path, argv, env: started.append(argv))
    flows.service.container_worker()
    [argv] = started
    assert argv[1:5] == ["worker", "start", "--pool", flows.service.POOL]
    assert "--with-healthcheck" in argv
    # The check may fail while the worker sets up (pool, deployments): its grace period.
    assert compose["services"]["worker"]["healthcheck"]["start_period"]


@pytest.mark.slow
def test_the_worker_healthcheck_answers_from_a_real_worker(compose, prefect_storage, tmp_path):
    """`prefect worker start --with-healthcheck` with the compose worker's webserver settings
    serves /health where the compose healthcheck's own command asks (here on a free port)."""
    import os
    import subprocess
    import sys
    import time

    from prefect.settings import PREFECT_API_URL

    from flows.processes import free_port

    url = _worker_health_url(compose)
    env = _env(compose["services"]["worker"])
    port = free_port()
    worker_env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_WORKER_WEBSERVER_HOST": env["PREFECT_WORKER_WEBSERVER_HOST"],
        "PREFECT_WORKER_WEBSERVER_PORT": str(port),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
    }
    check = compose["services"]["worker"]["healthcheck"]["test"][1:]
    assert check[0] == "python"
    check = [
        sys.executable,
        *(arg.replace(url, url.replace(":8080/", f":{port}/")) for arg in check[1:]),
    ]
    assert f":{port}/health" in " ".join(check)
    prefect = str(Path(sys.executable).with_name("prefect"))
    cmd = [
        prefect,
        "worker",
        "start",
        "--pool",
        "healthcheck-test",
        "--type",
        "process",
        "--with-healthcheck",
    ]
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(cmd, env=worker_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # A worker process imports Prefect and starts its server: slow on a busy 2-core machine.
        deadline = time.monotonic() + 120
        while subprocess.run(check, capture_output=True, check=False).returncode != 0:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "the worker's /health never answered"
            time.sleep(0.5)  # between two runs of the healthcheck command
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log.close()


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
    # Prefect reads no password file: the server's shell hands it to Prefect's settings through
    # a .env file (test_the_server_gets_the_password_in_its_settings_not_its_environment).
    command = " ".join(services["prefect-server"]["command"])
    assert "export" not in command and "PASSWORD=" not in command.replace("PASSWORD=%s", "")
    assert "secrets" not in services["local-api"]
    for name, service in services.items():
        env = _env(service)
        assert not {"PII_HASH_KEY", "POSTGRES_PASSWORD"} & set(env), name
        assert not any("POSTGRES_PASSWORD}" in value for value in env.values()), name


PASSWORD_PROBE = """
import json, os, sys
from prefect.settings import get_current_settings

password = get_current_settings().server.database.password
print(json.dumps({
    "argv": sys.argv[1:],
    "password": password.get_secret_value() if password else None,
    "environment": "\\n".join(os.environ.values()),
    "env_file_mode": os.stat(".env").st_mode & 0o777,
}))
"""


def test_the_server_gets_the_password_in_its_settings_not_its_environment(compose, tmp_path):
    """The prefect-server command, run by sh with a stand-in `prefect` that reads Prefect's
    settings: they hold the password, the process environment does not, the file is 0600."""
    import json
    import os
    import secrets
    import subprocess
    import sys

    service = compose["services"]["prefect-server"]
    [memory_dir] = service["tmpfs"]  # the .env lives in memory, never on the container's disk
    password = secrets.token_hex(24)
    secret = tmp_path / "postgres_password"
    secret.write_text(password + "\n")  # as `openssl rand -hex 24 >` writes it
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "prefect").write_text(f"#!{sys.executable}\n{PASSWORD_PROBE}")
    (bin_dir / "prefect").chmod(0o755)
    script = (
        service["command"][2]
        .replace("$$", "$")  # compose's escape for a literal $
        .replace("/run/secrets/postgres_password", str(secret))
        .replace(memory_dir, str(run_dir))
    )
    assert service["command"][:2] == ["sh", "-c"]
    env = {k: _interpolate(v, {}) for k, v in _env(service).items()}
    env = {**os.environ, **env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=True)
    seen = json.loads(done.stdout)
    assert seen["argv"] == ["server", "start", "--host", "0.0.0.0", "--port", "4200"]
    assert seen["password"] == password
    assert password not in seen["environment"]
    assert seen["env_file_mode"] == 0o600


# The files that show how to create the key files, and each line that writes one.
KEY_FILE_DOCS = ("README.md", "docs/service.md", ".env.example", "docker-compose.yml")
WRITES_A_KEY_FILE = re.compile(r"^[#\s]*(.*> \.secrets/\w+.*?)\s*(?:# .*)?$")


def test_every_key_file_the_docs_create_is_0600(tmp_path):
    """Each documented line that writes a key file, run as written: the files are 0600 and the
    folder 0700 whatever the caller's umask."""
    import os
    import stat
    import subprocess

    lines = {
        doc: [
            m[1]
            for line in (ROOT / doc).read_text().splitlines()
            if (m := WRITES_A_KEY_FILE.match(line))
        ]
        for doc in KEY_FILE_DOCS
    }
    for doc, found in lines.items():
        assert len(found) == 2, (doc, found)  # the HMAC key and the database password
        workdir = tmp_path / doc.replace("/", "_")
        workdir.mkdir()
        script = "umask 022\n" + "\n".join(found)  # the usual default umask
        subprocess.run(["sh", "-ec", script], cwd=workdir, check=True)
        keys = sorted((workdir / ".secrets").iterdir())
        assert [k.name for k in keys] == ["pii_hash_key", "postgres_password"], doc
        for key in keys:
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, (doc, key.name)
            assert len(key.read_text().strip()) >= 32, (doc, key.name)
        assert stat.S_IMODE(os.stat(workdir / ".secrets").st_mode) == 0o700, doc


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


def test_dockerfile_pins_uv_and_caches_its_downloads(dockerfile):
    """uv at one exact version, and `uv sync` with uv's cache in a BuildKit cache mount."""
    [arg] = [line for line in dockerfile if line.startswith("ARG UV_VERSION=")]
    assert re.fullmatch(r"ARG UV_VERSION=\d+\.\d+\.\d+", arg)
    [install] = [line for line in dockerfile if "install" in line and "uv==" in line]
    assert '"uv==${UV_VERSION}"' in install and dockerfile.index(arg) < dockerfile.index(install)
    [sync] = [line for line in dockerfile if "uv sync" in line]
    assert sync.startswith("RUN --mount=type=cache,target=/root/.cache/uv ")
    # uv copies out of a cache on another file system (no hard links): said, not left to warn.
    assert any(line.startswith("ENV") and "UV_LINK_MODE=copy" in line for line in dockerfile)
    users = [line for line in dockerfile if line.startswith("USER")]
    assert dockerfile.index(sync) < dockerfile.index(users[-1])  # the cache is root's, at build


def test_dockerignore_keeps_secrets_and_state_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".secrets", ".prefect", ".venv", ".git", "data_lake", "db"):
        assert entry in ignored, entry


def test_prefect_yaml_deployments(prefect_yaml):
    import importlib

    from prefect import Flow

    deployments = {d["name"]: d for d in prefect_yaml["deployments"]}
    assert set(deployments) == {"daily", "backfill", "range", "docker"}
    for deployment in deployments.values():
        path, name = deployment["entrypoint"].split(":")
        assert path.startswith("flows/") and (ROOT / path).is_file()
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
        assert isinstance(flow, Flow), deployment["entrypoint"]
        # A hung run cannot block the schedule; no parameter defaults here, an unset parameter
        # takes the worker's setting of the same name (FAKER_RECORDS, ...).
        assert flow.timeout_seconds and flow.timeout_seconds >= 600
        assert "parameters" not in deployment
        assert deployment["concurrency_limit"] == 1
    from flows.service import BACKFILL_QUEUE, POOL, pool_deployments

    pools = {name: d["work_pool"]["name"] for name, d in deployments.items()}
    assert pools == {"daily": POOL, "backfill": POOL, "range": POOL, "docker": "faker-docker"}
    # `make serve` and the compose worker deploy the process pool's, never the Docker one (its
    # pool need not exist, and `prefect deploy` refuses a deployment whose pool is missing).
    assert pool_deployments() == ["--name", "daily", "--name", "backfill", "--name", "range"]
    queues = {name: d["work_pool"]["work_queue_name"] for name, d in deployments.items()}
    assert queues == {
        "daily": "default",
        "backfill": BACKFILL_QUEUE,
        "range": BACKFILL_QUEUE,
        "docker": "default",
    }
    [schedule] = deployments["daily"]["schedules"]
    assert schedule["timezone"] == "UTC" and len(schedule["cron"].split()) == 5
    assert not deployments["backfill"].get("schedules") and not deployments["range"]["schedules"]
    assert not deployments["docker"]["schedules"]  # never beside daily's: one run per date
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
    overrides = [d["name"] for d in prefect_yaml["deployments"] if "pull" in d]
    assert overrides == ["docker"]  # the one whose code is in the image, not the checkout


def _workdir(dockerfile: list[str]) -> str:
    [workdir] = [line.split()[1] for line in dockerfile if line.startswith("WORKDIR")]
    return workdir


def test_prefect_yaml_docker_deployment_matches_the_image_and_the_stack(
    prefect_yaml, dockerfile, compose
):
    """The Docker pool's job variables name the image compose builds, the folders the image
    makes (under its WORKDIR), the compose stack's volumes and network, and the worker's env."""
    [docker] = [d for d in prefect_yaml["deployments"] if d["name"] == "docker"]
    jobs = docker["work_pool"]["job_variables"]
    workdir = _workdir(dockerfile)
    [pull] = docker["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == workdir

    worker = compose["services"]["worker"]
    assert jobs["image"] == worker["image"] and jobs["image_pull_policy"] == "Never"
    assert jobs["networks"] == [f"{compose['name']}_default"]
    mounts = dict(volume.split(":", 1) for volume in jobs["volumes"])
    # Compose names a project's volumes <project name>_<volume>; the worker mounts the same ones.
    named = {f"{compose['name']}_{v.split(':')[0]}": v.split(":")[1] for v in worker["volumes"]}
    assert {k: v for k, v in mounts.items() if k in named} == named
    [made] = [line for line in dockerfile if line.startswith("RUN useradd")]
    for path in named.values():
        assert path.startswith(workdir + "/") and f" {path.removeprefix(workdir + '/')}" in made
    # The key: bind-mounted read-only from the checkout deployed from, where compose reads it.
    [key_mount] = [m for m in mounts if m.endswith("/.secrets/pii_hash_key")]
    assert key_mount == "{{ project-dir.stdout }}/.secrets/pii_hash_key"
    worker_env = _env(worker)
    assert mounts[key_mount] == worker_env["PII_HASH_KEY_FILE"] + ":ro"
    assert compose["secrets"]["pii_hash_key"]["file"].endswith("./.secrets/pii_hash_key}")

    env = jobs["env"]
    for name in ("PREFECT_API_URL", "PII_HASH_KEY_FILE", "DATA_LAKE_DIR", "DUCKDB_PATH"):
        assert env[name] == worker_env[name], name
    assert worker_env["FAKER_API_URL"] == "${FAKER_API_URL:-" + env["FAKER_API_URL"] + "}"
    assert env["DATA_LAKE_DIR"] in named.values()
    assert str(Path(env["DUCKDB_PATH"]).parent) in named.values()
    assert not any(SECRET_NAMES.search(k) and not k.endswith("_FILE") for k in env)


def test_flow_runs_get_the_returning_arrow_pool(prefect_yaml, dockerfile):
    """pyarrow reads ARROW_DEFAULT_MEMORY_POOL when it loads: it must be in the run's env."""
    for deployment in prefect_yaml["deployments"]:
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env["ARROW_DEFAULT_MEMORY_POOL"] == "jemalloc"
    [env_line] = [line for line in dockerfile if line.startswith("ENV PROJECT_DIR=")]
    assert "ARROW_DEFAULT_MEMORY_POOL=jemalloc" in env_line.split()
    makefile = (ROOT / "Makefile").read_text()
    assert "export ARROW_DEFAULT_MEMORY_POOL ?= jemalloc" in makefile
