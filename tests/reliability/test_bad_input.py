"""Bad input wherever a user types: one error line naming the value, before any request or write.

An API that is unreachable when a run starts belongs here, not in the fault matrix: the CLI and
the flow refuse it up front (exit 2 / InputError), so no run starts and nothing is recorded.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Callable

import pytest

from flows.cli import main
from flows.user_metrics import user_metrics_pipeline
from local_api.server import LocalApiServer
from tasks.common.inputs import InputError, RunOptions
from tests.reliability.conftest import Site, error_lines

TODAY = dt.datetime.now(dt.UTC).date()
FUTURE = TODAY + dt.timedelta(days=3)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit code, stderr) of the CLI, including argparse's own exits."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, names: list[str], api: LocalApiServer, site: Site) -> None:
    """Exit 2, exactly one `error:` line naming every given value, no request, nothing on disk."""
    lines = error_lines(err)
    assert code == 2, (code, err)
    assert len(lines) == 1, f"expected one error line, got {lines}"
    assert lines[0].startswith("error: ") or ": error: " in lines[0], lines[0]
    for name in names:
        assert name.lower() in lines[0].lower(), f"{name!r} not named in {lines[0]!r}"
    assert_untouched(api, site)


def assert_untouched(api: LocalApiServer, site: Site) -> None:
    """No request reached the API and nothing was written to the lake or DuckDB."""
    assert api.stats()["total"] == 0, "a request was made"
    assert not site.lake.exists() and not site.db.exists(), "something was written"


Refused = Callable[[list[str], list[str]], None]


@pytest.fixture
def cli_refuses(api: LocalApiServer, site: Site, capsys: pytest.CaptureFixture[str]) -> Refused:
    """`cli_refuses(argv, names)`: the CLI exits 2 naming every name, before any request or
    write."""

    def check(argv: list[str], names: list[str]) -> None:
        code, err = run_main(argv, capsys)
        assert_refused(code, err, names, api, site)

    return check


CLI_CASES = {
    "records zero": (["--records", "0"], ["records", "0"]),
    "records negative": (["--records", "-5"], ["-5"]),
    "records absurd": (["--records", "20000000"], ["20000000"]),
    "records not a number": (["--records", "abc"], ["abc"]),
    "page size zero": (["--page-size", "0"], ["page_size", "0"]),
    "page size over 1000": (["--page-size", "1001"], ["1001"]),
    "malformed date": (["--run-date", "2026-13-01"], ["2026-13-01"]),
    "date in words": (["--run-date", "yesterday"], ["yesterday"]),
    "date without zero padding": (["--run-date", "2026-1-5"], ["2026-1-5"]),
    "future date": (["--run-date", FUTURE.isoformat()], [FUTURE.isoformat()]),
    "date before the API's birthdays": (["--run-date", "0001-01-01"], ["0001-01-01", "1900-01-01"]),
    "seed zero": (["--seed", "0"], ["seed", "0"]),
    "backward range": (
        ["--start-date", "2026-06-03", "--end-date", "2026-06-01"],
        ["2026-06-03", "2026-06-01"],
    ),
    "range into the future": (
        ["--start-date", TODAY.isoformat(), "--end-date", FUTURE.isoformat()],
        [FUTURE.isoformat()],
    ),
    "range starting before 1900": (
        ["--start-date", "1899-12-31", "--end-date", "1900-01-02"],
        ["1899-12-31", "1900-01-01"],
    ),
    "range with a malformed end": (
        ["--start-date", "2026-06-01", "--end-date", "2026-06-31"],
        ["2026-06-31"],
    ),
    "range longer than BACKFILL_MAX_DAYS": (
        ["--start-date", "2020-01-01", "--end-date", "2026-01-01"],
        ["2020-01-01"],
    ),
    "range and run date together": (
        ["--start-date", "2026-06-01", "--end-date", "2026-06-02", "--run-date", "2026-06-01"],
        ["--run-date"],
    ),
}


@pytest.mark.parametrize("argv, names", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_cli_flag(
    argv: list[str], names: list[str], api: LocalApiServer, cli_refuses: Refused
) -> None:
    cli_refuses(["--api-url", api.base_url, *argv], names)


URL_CASES = {
    "ftp URL": ("ftp://example.org/api/v2", ["ftp://example.org/api/v2"]),
    "not a URL": ("not a url", ["not a url"]),
    "no host": ("http:///api/v2", ["http:///api/v2"]),
}


@pytest.mark.parametrize("url, names", URL_CASES.values(), ids=URL_CASES.keys())
def test_cli_url(url: str, names: list[str], cli_refuses: Refused) -> None:
    cli_refuses(["--api-url", url, "--records", "100"], names)


def flow_run_count() -> int:
    """Flow runs in the session's Prefect test harness, where a CLI run in this process records."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.count_flow_runs()


# A URL's secrets go around the live local API, so that only the refusal stops the run: without
# it, the run would reach the API, create a flow run and keep the URL in its parameters.
SECRET_URL_CASES = {
    "--api-url with credentials": (
        {},
        "http://user:pw@{hostport}/api/v2",
        ["api_url", "credentials", "{hostport}"],
        ["user:pw", "pw@"],
    ),
    "--api-url with a query string": (
        {},
        "http://{hostport}/api/v2?token=abc",
        ["api_url", "query string", "{hostport}"],
        ["token", "abc"],
    ),
    "FAKER_API_URL with credentials": (
        {"FAKER_API_URL": "htp://user:pw@{hostport}/api/v2"},
        None,
        ["FAKER_API_URL", "credentials", "{hostport}"],
        ["user:pw", "pw@"],
    ),
}


@pytest.mark.parametrize(
    "env, url, names, secrets", SECRET_URL_CASES.values(), ids=SECRET_URL_CASES.keys()
)
def test_cli_refuses_a_url_carrying_secrets_before_any_flow_run(
    env: dict[str, str],
    url: str | None,
    names: list[str],
    secrets: list[str],
    api: LocalApiServer,
    site: Site,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hostport = api.base_url.split("://", 1)[1].split("/", 1)[0]
    site.set_env(**{k: v.format(hostport=hostport) for k, v in env.items()})
    argv = ["--records", "100"] + (["--api-url", url.format(hostport=hostport)] if url else [])
    runs_before = flow_run_count()
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert_refused(code, err, [n.format(hostport=hostport) for n in names], api, site)
    for secret in secrets:
        assert secret not in out + err, f"{secret!r} echoed: {out + err!r}"
    assert flow_run_count() == runs_before, "a flow run was created (it would keep the URL)"


FLOW_SECRET_URLS = {
    "credentials": "http://user:s3cret-pw@{hostport}/api/v2",
    "query string": "http://{hostport}/api/v2?token=s3cret-token",
    "fragment": "http://{hostport}/api/v2#s3cret-fragment",
}


@pytest.mark.parametrize("url", FLOW_SECRET_URLS.values(), ids=FLOW_SECRET_URLS.keys())
def test_flow_parameter_url_carrying_secrets_fails_first_without_echoing_them(
    url: str, api: LocalApiServer, site: Site
) -> None:
    """A deployment run keeps the parameter as typed; its first step refuses it, and nothing
    the run writes (error, state, logs, artifacts) repeats the secret."""
    from prefect.logging.handlers import APILogHandler

    from tests.reliability.drills import run_artifacts, run_logs

    hostport = api.base_url.split("://", 1)[1].split("/", 1)[0]
    state = user_metrics_pipeline(
        api_url=url.format(hostport=hostport),
        records=100,
        run_date=dt.date(2026, 5, 1),
        return_state=True,
    )
    error = state.result(raise_on_failure=False)
    assert isinstance(error, InputError), repr(error)
    assert f"api_url 'http://{hostport}/api/v2'" in str(error), str(error)
    APILogHandler().flush()
    run_id = str(state.state_details.flow_run_id)
    logs, artifacts = run_logs(run_id), run_artifacts(run_id)
    assert logs and "run-failure" in artifacts, (logs, artifacts)
    written = [str(error), str(state.message), *logs, *artifacts.values()]
    assert not [text for text in written if "s3cret" in text], written
    assert_untouched(api, site)


def test_cli_unreachable_url(cli_refuses: Refused) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}/api/v2"
    cli_refuses(["--api-url", url, "--records", "100"], [str(port), "unreachable"])


ENV_CASES = {
    "FAKER_PAGE_SIZE=5000": ({"FAKER_PAGE_SIZE": "5000"}, ["FAKER_PAGE_SIZE", "5000"]),
    "FAKER_RECORDS=0": ({"FAKER_RECORDS": "0"}, ["FAKER_RECORDS", "0"]),
    "FAKER_RECORDS=abc": ({"FAKER_RECORDS": "abc"}, ["FAKER_RECORDS", "abc"]),
    "FAKER_API_URL=ftp://x": ({"FAKER_API_URL": "ftp://x"}, ["FAKER_API_URL", "ftp://x"]),
    "FAKER_SEED=0": ({"FAKER_SEED": "0"}, ["FAKER_SEED", "0"]),
    "FETCH_CONCURRENCY=0": ({"FETCH_CONCURRENCY": "0"}, ["FETCH_CONCURRENCY", "0"]),
    "RETRY_MAX_ATTEMPTS=0": ({"RETRY_MAX_ATTEMPTS": "0"}, ["RETRY_MAX_ATTEMPTS", "0"]),
    "HTTP_READ_TIMEOUT_SECONDS=-1": (
        {"HTTP_READ_TIMEOUT_SECONDS": "-1"},
        ["HTTP_READ_TIMEOUT_SECONDS", "-1"],
    ),
    "DUCKDB_LOCK_TIMEOUT_SECONDS=0": (
        {"DUCKDB_LOCK_TIMEOUT_SECONDS": "0"},
        ["DUCKDB_LOCK_TIMEOUT_SECONDS", "0"],
    ),
    "SCHEMA_DRIFT_POLICY=sometimes": (
        {"SCHEMA_DRIFT_POLICY": "sometimes"},
        ["SCHEMA_DRIFT_POLICY", "sometimes"],
    ),
    "PII_HASH_KEY empty": ({"PII_HASH_KEY": ""}, ["PII_HASH_KEY", "empty"]),
    "PII_HASH_KEY blank": ({"PII_HASH_KEY": "   "}, ["PII_HASH_KEY"]),
    "PII_HASH_KEY too short": ({"PII_HASH_KEY": "short"}, ["PII_HASH_KEY", "short"]),
}


@pytest.mark.parametrize("env, names", ENV_CASES.values(), ids=ENV_CASES.keys())
def test_env_value(
    env: dict[str, str],
    names: list[str],
    api: LocalApiServer,
    site: Site,
    cli_refuses: Refused,
) -> None:
    site.set_env(**env)
    # FAKER_API_URL is the case under test there, so no --api-url overrides it.
    argv = ["--records", "100"] if "FAKER_API_URL" in env else ["--api-url", api.base_url]
    cli_refuses(argv, names)


FLOW_ENV_CASES = [
    "FAKER_RECORDS=abc",
    "DUCKDB_LOCK_TIMEOUT_SECONDS=0",
    "SCHEMA_DRIFT_POLICY=sometimes",
]


@pytest.mark.parametrize("case", FLOW_ENV_CASES)
def test_env_value_in_a_flow_run(case: str, api: LocalApiServer, site: Site) -> None:
    """A deployment's run meets the worker's settings without the CLI: it fails with the same
    one line naming the variable, not a library error with its message withheld."""
    env, names = ENV_CASES[case]
    site.set_env(**env)
    state = user_metrics_pipeline(
        api_url=api.base_url, records=100, run_date=dt.date(2026, 5, 1), return_state=True
    )
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, InputError), repr(error)
    assert str(error).startswith("invalid setting ") and "\n" not in str(error), str(error)
    for name in names:
        assert name in str(error), (name, str(error))
    assert_untouched(api, site)


PARAM_CASES = {
    "records=0": ({"records": 0}, ["records=0"]),
    "records absurd": ({"records": 20_000_000}, ["20000000"]),
    "page_size=5000": ({"page_size": 5000}, ["page_size=5000"]),
    "page_size=0": ({"page_size": 0}, ["page_size=0"]),
    "future run_date": ({"run_date": FUTURE}, [FUTURE.isoformat()]),
    "run_date before 1900": ({"run_date": dt.date(1899, 12, 31)}, ["1899-12-31", "1900-01-01"]),
    "seed=0": ({"seed": 0}, ["seed=0"]),
    "ftp api_url": ({"api_url": "ftp://x"}, ["ftp://x"]),
}


@pytest.mark.parametrize("params, names", PARAM_CASES.values(), ids=PARAM_CASES.keys())
def test_flow_parameter(
    params: dict,
    names: list[str],
    api: LocalApiServer,
    site: Site,
) -> None:
    kwargs = {"api_url": api.base_url, "records": 100, "run_date": dt.date(2026, 5, 1), **params}
    state = user_metrics_pipeline(**kwargs, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, InputError), repr(error)
    for name in names:
        assert name in str(error), (name, str(error))
    assert "\n" not in str(error).strip()
    assert_untouched(api, site)


def test_flow_parameter_malformed_date_string(api: LocalApiServer, site: Site) -> None:
    """A deployment run may pass a string: Prefect's parameter check must name it."""
    state = user_metrics_pipeline(
        api_url=api.base_url, records=100, run_date="2026-13-01", return_state=True
    )
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert "2026-13-01" in str(error) or "run_date" in str(error), repr(error)
    assert_untouched(api, site)


def test_flow_unreachable_url(api: LocalApiServer, site: Site) -> None:
    url = f"http://127.0.0.1:{closed_port()}/api/v2"
    state = user_metrics_pipeline(
        api_url=url, records=100, run_date=dt.date(2026, 5, 1), return_state=True
    )
    error = state.result(raise_on_failure=False)
    assert isinstance(error, InputError) and url in str(error), repr(error)
    assert not site.lake.exists() and not site.db.exists()


def test_backfill_flow_backward_range(api: LocalApiServer, site: Site) -> None:
    from flows.user_metrics import user_metrics_backfill

    state = user_metrics_backfill(
        start_date=dt.date(2026, 6, 3),
        end_date=dt.date(2026, 6, 1),
        options=RunOptions(api_url=api.base_url, records=100),
        return_state=True,
    )
    error = state.result(raise_on_failure=False)
    assert isinstance(error, InputError), repr(error)
    assert "2026-06-03" in str(error) and "2026-06-01" in str(error)
    assert_untouched(api, site)
