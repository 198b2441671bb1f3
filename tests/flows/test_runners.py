"""The runner and timeout settings (TASK_RUNNER, DASK_*, FLOW_TIMEOUT_SECONDS,
BACKFILL_TIMEOUT_SECONDS): a bad value still lets the flow module load, the flow's runner refuses
the run naming it, and the CLI refuses it in one `error:` line (exit 2) before Prefect starts; a
good value is what the flows and deployments use; TASK_RUNNER=dask without the dask extra says
how to install it.

Each case is a fresh Python process: the flow module takes these settings when it loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from flows.runners import DASK_EXTRA_MISSING, RefusedTaskRunner, flow_setup

ROOT = Path(__file__).resolve().parents[2]
VARIABLES = (
    "TASK_RUNNER",
    "DASK_ADDRESS",
    "DASK_WORKERS",
    "DASK_ALLOW_SPILL",
    "DASK_TRUSTED_NETWORK",
    "FLOW_TIMEOUT_SECONDS",
    "BACKFILL_TIMEOUT_SECONDS",
)
# Loads the flow module, prints what it took from the settings as JSON on one line, then runs
# the CLI with the arguments given (none: stops there).
CHILD = """
import json, sys
{prelude}
import flows.user_metrics as module
runner = module.user_metrics_pipeline.task_runner
print(json.dumps({{
    "runner": type(runner).__name__,
    "refusal": str(getattr(runner, "error", "")),
    "workers": (getattr(runner, "cluster_kwargs", None) or {{}}).get("n_workers"),
    "spill_off": "data" in (getattr(runner, "cluster_kwargs", None) or {{}}),
    "flow_timeout": module.deployed_pipeline.timeout_seconds,
    "backfill_timeout": module.deployed_backfill.timeout_seconds,
}}), flush=True)
if sys.argv[1:]:
    from flows.cli import main
    sys.exit(main(sys.argv[1:]))
"""
# The API is never asked: every case here is refused before any request.
CLI_ARGS = ["--api-url", "http://127.0.0.1:9/api/v2", "--records", "10", "--run-date", "2026-01-01"]


def load_flows(
    env: dict[str, str], args: list[str], prelude: str = ""
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """Load the flow module (then run the CLI with `args`) in a fresh Python under `env`."""
    base = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(prelude=prelude), *args],
        env={**base, **env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        # Importing Prefect and the flow module on a busy 2-core machine.
        timeout=180,
    )
    assert done.stdout.strip(), f"the flow module did not load: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[0]), done


BAD = {
    "flow timeout zero": ({"FLOW_TIMEOUT_SECONDS": "0"}, "FLOW_TIMEOUT_SECONDS (got '0')"),
    "unknown runner": ({"TASK_RUNNER": "ray"}, "TASK_RUNNER (got 'ray')"),
    "workers not a number": (
        {"TASK_RUNNER": "dask", "DASK_WORKERS": "two"},
        "DASK_WORKERS (got 'two')",
    ),
}


@pytest.mark.parametrize("env, named", BAD.values(), ids=BAD.keys())
def test_bad_setting_is_refused_in_one_line_and_the_flows_still_load(
    env: dict[str, str], named: str
) -> None:
    loaded, done = load_flows(env, CLI_ARGS)

    # The module loaded, with a runner that refuses every run naming the setting, and no
    # default in place of the bad value: the deployments carry no timeout of their own.
    assert loaded["runner"] == "RefusedTaskRunner", loaded
    assert named in loaded["refusal"] and "\n" not in loaded["refusal"], loaded
    assert (loaded["flow_timeout"], loaded["backfill_timeout"]) == (None, None), loaded

    # The CLI: exit 2 and one line, before Prefect starts.
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("error: invalid setting "), done.stderr
    assert named in done.stderr


MORE_BAD = {
    "flow timeout not a number": ("FLOW_TIMEOUT_SECONDS", "soon"),
    "backfill timeout negative": ("BACKFILL_TIMEOUT_SECONDS", "-5"),
    "no workers": ("DASK_WORKERS", "0"),
    "spill flag misspelt": ("DASK_ALLOW_SPILL", "ture"),
    "trust flag misspelt": ("DASK_TRUSTED_NETWORK", "yes please"),
}


@pytest.mark.parametrize("name, value", MORE_BAD.values(), ids=MORE_BAD.keys())
def test_each_bound_is_refused_by_the_flows_and_the_cli(
    name: str,
    value: str,
    pipeline_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # In this process: the same paths as above (what the flow module takes when it loads, and
    # the CLI), for the other settings.
    from flows.cli import main
    from tasks.common.settings import get_settings

    monkeypatch.setenv("TASK_RUNNER", "dask")
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    named = f"{name} (got {value!r})"
    setup = flow_setup()
    assert isinstance(setup.task_runner, RefusedTaskRunner)
    assert named in str(setup.task_runner.error)
    assert (setup.flow_timeout_seconds, setup.backfill_timeout_seconds) == (None, None)

    assert main(CLI_ARGS) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith("error: invalid setting "), err
    assert named in err
    assert not (pipeline_env / "lake").exists() and not (pipeline_env / "db").exists()


@pytest.mark.parametrize("missing", ["prefect_dask", "distributed"])
def test_dask_without_the_extra_says_how_to_install_it(missing: str) -> None:
    # A None entry in sys.modules makes `import <name>` raise ImportError, as an install without
    # the extra would.
    prelude = f"sys.modules[{missing!r}] = None"
    loaded, done = load_flows({"TASK_RUNNER": "dask"}, CLI_ARGS, prelude)

    assert loaded["runner"] == "RefusedTaskRunner", loaded
    assert loaded["refusal"] == DASK_EXTRA_MISSING
    # The settings themselves are good: the deployments keep their timeouts.
    assert (loaded["flow_timeout"], loaded["backfill_timeout"]) == (3600, 86_400), loaded

    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == f"error: {DASK_EXTRA_MISSING}"
    # The command it gives installs what the project declares.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra = project["optional-dependencies"]["dask"]
    assert any(requirement.startswith("prefect-dask") for requirement in extra), extra
    assert "uv sync --extra dask" in done.stderr


def test_good_settings_are_what_the_flows_use() -> None:
    env = {
        "TASK_RUNNER": "dask",
        "DASK_WORKERS": "3",
        "DASK_ALLOW_SPILL": "true",
        "FLOW_TIMEOUT_SECONDS": "1234",
        "BACKFILL_TIMEOUT_SECONDS": "4321",
    }
    loaded, done = load_flows(env, [])
    assert done.returncode == 0, done.stderr[-2000:]
    assert loaded == {
        "runner": "DaskTaskRunner",
        "refusal": "",
        "workers": 3,
        "spill_off": False,
        "flow_timeout": 1234,
        "backfill_timeout": 4321,
    }

    defaults, done = load_flows({}, [])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (defaults["runner"], defaults["flow_timeout"], defaults["backfill_timeout"]) == (
        "ThreadPoolTaskRunner",
        3600,
        86_400,
    )


def test_a_cli_run_takes_its_deadline_from_flow_timeout_seconds(
    start_api,
    pipeline_env: Path,
    prefect_storage: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flows.cli import main
    from tasks.common.settings import get_settings
    from tasks.ingest.fetch import close_clients
    from tests.reliability.conftest import error_lines, wait_for

    # Every body a byte per 0.3 s, and a response deadline far past the run's: only the run's
    # deadline can end it.
    api = start_api(slow_body_rate=1.0, slow_body_seconds=0.3)
    monkeypatch.setenv("FETCH_RESPONSE_DEADLINE_SECONDS", "600")
    monkeypatch.setenv("FLOW_TIMEOUT_SECONDS", "8")
    get_settings.cache_clear()
    try:
        code = main(["--api-url", api.base_url, "--records", "10", "--run-date", "2026-04-12"])
        err = capsys.readouterr().err
        assert code == 1, err
        (line,) = error_lines(err)
        assert line.startswith(
            "error: the run exceeded its 8 s deadline (FLOW_TIMEOUT_SECONDS / --deadline-seconds)"
        ), line
        wait_for(lambda: api.stats()["in_flight"] == 0, 30, "the slow responses to end")
    finally:
        close_clients()
