"""Parameters as Prefect sees them: bounds in the schema, refused when a run is created, defaults
from the worker's settings; and `prefect deploy` typed as Prefect's docs say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

from flows.processes import PROJECT_DIR
from flows.user_metrics import deployed_backfill, deployed_pipeline
from tasks.common.inputs import MAX_PAGE_SIZE, MAX_RECORDS, MAX_SEED
from tests.e2e.conftest import SETTINGS_RECORDS, Service, trigger

pytestmark = pytest.mark.e2e

PREFECT = str(Path(sys.executable).with_name("prefect"))
DEPLOYMENTS = ("user-metrics-pipeline/daily", "user-metrics-pipeline/backfill")


def _client(service: Service) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.settings import temporary_settings

    with temporary_settings(service.settings()):
        return get_client(sync_client=True)


def _prefect(service: Service, *args: str, env: dict[str, str] | None = None) -> str:
    """A `prefect` command as a user types it in the checkout; its output, whatever its code."""
    done = subprocess.run(
        [PREFECT, *args],
        env=env or service.client_env(),
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}"


def _flow_run_count(service: Service) -> int:
    with _client(service) as client:
        return int(client.count_flow_runs())


def test_parameter_schema_shows_the_bounds() -> None:
    """What the UI's run form shows and what a deployment enforces, from the one declaration."""
    from prefect.utilities.callables import parameter_schema

    pipeline = parameter_schema(deployed_pipeline).model_dump()["properties"]
    for name, high in (("records", MAX_RECORDS), ("page_size", MAX_PAGE_SIZE), ("seed", MAX_SEED)):
        assert (pipeline[name]["minimum"], pipeline[name]["maximum"]) == (1, high), name
    [date] = [s for s in pipeline["run_date"]["anyOf"] if s["type"] == "string"]
    assert date["format"] == "date" and "pattern" in date
    backfill = parameter_schema(deployed_backfill).model_dump()
    options = backfill["definitions"]["RunOptions"]["properties"]
    assert (options["records"]["minimum"], options["records"]["maximum"]) == (1, MAX_RECORDS)
    assert "pattern" in backfill["properties"]["start_date"]


@pytest.mark.parametrize(
    "param, field",
    [
        ("records=-5", "records"),
        (f"page_size={MAX_PAGE_SIZE * 5}", "page_size"),
        ("run_date=2026-13-01", "run_date"),
        ("seed=0", "seed"),
    ],
)
def test_bad_param_is_refused_when_the_run_is_created(
    service: Service, param: str, field: str
) -> None:
    before = _flow_run_count(service)
    output = _prefect(service, "deployment", "run", DEPLOYMENTS[0], f"--param={param}")
    assert not output.startswith("exit 0"), output
    assert field in output and "UUID:" not in output, output
    # Refused by the server, not failed later: no flow run was created.
    assert _flow_run_count(service) == before


def test_bad_backfill_option_is_refused_when_the_run_is_created(service: Service) -> None:
    before = _flow_run_count(service)
    output = _prefect(
        service,
        "deployment",
        "run",
        "user-metrics-backfill/range",
        "--param=start_date=2026-11-01",
        "--param=end_date=2026-11-02",
        '--param=options={"records": -5}',
    )
    assert not output.startswith("exit 0") and "records" in output, output
    assert _flow_run_count(service) == before


def test_deployment_defaults_come_from_the_worker_settings(service: Service) -> None:
    """No defaults in prefect.yaml: a run without `records` loads the worker's FAKER_RECORDS."""
    with _client(service) as client:
        for name in DEPLOYMENTS:
            assert client.read_deployment_by_name(name).parameters == {}, name
    run = trigger(service, f'api_url="{service.api_url}"', deployment=DEPLOYMENTS[1])
    assert run.returncode == 0, run.output
    with duckdb.connect(str(service.duckdb_path), read_only=True) as con:
        row = con.execute(
            "select records_requested from pipeline_runs where flow_run_id = ?", [run.flow_run_id]
        ).fetchone()
    assert row == (SETTINGS_RECORDS,)


def test_prefect_deploy_without_project_dir_gives_working_deployments(
    service: Service,
) -> None:
    """`prefect deploy` of the pool's deployments (as prefect.yaml's header types it) in the
    checkout, no PROJECT_DIR: the pull step names the checkout."""
    from flows.service import pool_deployments

    env = {k: v for k, v in service.client_env().items() if k != "PROJECT_DIR"}
    output = _prefect(service, "--no-prompt", "deploy", *pool_deployments(), env=env)
    assert output.startswith("exit 0"), output
    with _client(service) as client:
        for name in (*DEPLOYMENTS, "user-metrics-backfill/range"):
            [step] = client.read_deployment_by_name(name).pull_steps or []
            directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
            assert directory == str(PROJECT_DIR), (name, step)
    run = trigger(service, f'api_url="{service.api_url}"', "records=100", deployment=DEPLOYMENTS[1])
    assert run.returncode == 0, run.output
    assert "finished successfully in 'Completed'" in run.output
