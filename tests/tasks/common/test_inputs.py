import datetime as dt
import socket

import pytest

from tasks.common.inputs import (
    InputError,
    RunOptions,
    check_api_url,
    check_page_size,
    check_reachable,
    check_records,
    default_run_date,
    parse_run_date,
)
from tasks.common.run_config import ChartBrowserConfig, resolve_run_config
from tasks.common.settings import Settings

TODAY = dt.date(2026, 11, 25)


@pytest.mark.parametrize("value", [0, -1, 10_000_001])
def test_records_out_of_range(value):
    with pytest.raises(InputError, match=f"records={value}"):
        check_records(value)


@pytest.mark.parametrize("value", [0, 1001, -3])
def test_page_size_out_of_range(value):
    with pytest.raises(InputError, match=f"page_size={value}"):
        check_page_size(value)


@pytest.mark.parametrize(
    "value",
    [
        "2026-13-01",
        "25/11/2026",
        "yesterday",
        "2026-1-5",
        "",
        "2026-W47-5",
        "20261120",
        "2026-11-20T00:00",
    ],
)
def test_malformed_dates(value):
    with pytest.raises(InputError, match="YYYY-MM-DD"):
        parse_run_date(value, today=TODAY)


def test_future_date_refused_and_default_is_today():
    with pytest.raises(InputError, match="future"):
        parse_run_date("2026-11-26", today=TODAY)
    assert parse_run_date(None, today=TODAY) == TODAY
    assert parse_run_date("2024-02-29", today=TODAY) == dt.date(2024, 2, 29)


@pytest.mark.parametrize(
    ("scheduled", "expected"),
    [
        # 23:30 in New York on the 24th is 04:30 UTC on the 25th.
        ("2026-11-24T23:30:00-05:00", dt.date(2026, 11, 25)),
        # 00:30 in Tokyo on the 26th is 15:30 UTC on the 25th.
        ("2026-11-26T00:30:00+09:00", dt.date(2026, 11, 25)),
        ("2026-11-23T06:00:00+00:00", dt.date(2026, 11, 23)),
        ("2026-11-23T23:59:59", dt.date(2026, 11, 23)),  # naive: Prefect's times are UTC
    ],
)
def test_default_run_date_is_the_scheduled_start_in_utc(scheduled, expected):
    # The scheduled date wins over today, and no other zone decides the day.
    assert default_run_date(dt.datetime.fromisoformat(scheduled), today=TODAY) == expected


def test_default_run_date_without_a_scheduled_start_is_today():
    assert default_run_date(None, today=TODAY) == TODAY
    before = dt.datetime.now(dt.UTC).date()
    assert default_run_date(None) in {before, dt.datetime.now(dt.UTC).date()}


@pytest.mark.parametrize("url", ["ftp://x/api", "localhost:8000", "not a url", "http://"])
def test_non_http_urls(url):
    with pytest.raises(InputError, match="http"):
        check_api_url(url)


def test_unreachable_url_names_host_and_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on the port we just released
    with pytest.raises(InputError, match=f"127.0.0.1:{port}"):
        check_reachable(f"http://127.0.0.1:{port}/api/v2", timeout=2)


def test_overrides_win_over_settings():
    settings = Settings(_env_file=None, faker_api_url="http://127.0.0.1:1/api/v2/")
    options = RunOptions(records=2500, page_size=100, seed=9)
    cfg = resolve_run_config(settings, options, run_date="2026-01-02")
    assert (cfg.records, cfg.page_size, cfg.seed) == (2500, 100, 9)
    assert cfg.api_url == "http://127.0.0.1:1/api/v2"
    assert cfg.run_date == dt.date(2026, 1, 2)
    with pytest.raises(InputError, match="seed=0"):
        resolve_run_config(settings, RunOptions(seed=0))


def test_the_gx_folder_sits_beside_the_lake_unless_set(tmp_path):
    # Beside the lake, never in it: Data Docs are written before the run commits anything.
    settings = Settings(_env_file=None, data_lake_dir=tmp_path / "lake")
    assert resolve_run_config(settings, RunOptions()).gx_dir == tmp_path / "gx"
    settings = Settings(_env_file=None, data_lake_dir=tmp_path / "lake", gx_dir=tmp_path / "docs")
    assert resolve_run_config(settings, RunOptions()).gx_dir == tmp_path / "docs"


def test_the_chart_browser_settings_reach_the_run_config(monkeypatch, tmp_path):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.delenv("CHARTS_ALLOW_BROWSER_DOWNLOAD", raising=False)
    unset = resolve_run_config(Settings(_env_file=None), RunOptions()).charts
    assert unset == ChartBrowserConfig(path=None, allow_download=False)
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "my-chrome"))
    monkeypatch.setenv("CHARTS_ALLOW_BROWSER_DOWNLOAD", "true")
    cfg = resolve_run_config(Settings(_env_file=None), RunOptions())
    assert cfg.charts == ChartBrowserConfig(path=tmp_path / "my-chrome", allow_download=True)


def test_settings_read_from_environment(monkeypatch):
    monkeypatch.setenv("FAKER_API_URL", "http://example.invalid/api/v2")
    monkeypatch.setenv("FAKER_PAGE_SIZE", "250")
    monkeypatch.setenv("DATA_LAKE_DIR", "/tmp/lake")
    settings = Settings(_env_file=None)
    assert settings.faker_api_url == "http://example.invalid/api/v2"
    assert settings.faker_page_size == 250
    assert str(settings.data_lake_dir) == "/tmp/lake"
    monkeypatch.setenv("FAKER_PAGE_SIZE", "5000")
    with pytest.raises(ValueError, match="faker_page_size"):
        Settings(_env_file=None)


def test_date_range_inclusive_and_checked():
    from tasks.common.inputs import date_range

    days = date_range("2026-01-30", "2026-02-02", max_days=10)
    assert [d.isoformat() for d in days] == ["2026-01-30", "2026-01-31", "2026-02-01", "2026-02-02"]
    with pytest.raises(InputError, match="backwards: end 2026-01-01 is before start 2026-01-05"):
        date_range("2026-01-05", "2026-01-01", max_days=10)
    with pytest.raises(InputError, match="more than 3"):
        date_range("2026-01-01", "2026-01-05", max_days=3)
    with pytest.raises(InputError, match="YYYY-MM-DD"):
        date_range("2026-01-01", "soon", max_days=3)


def test_settings_errors_name_the_variable_in_one_line(monkeypatch):
    from pydantic import ValidationError

    from tasks.common.inputs import settings_error_line

    monkeypatch.setenv("FAKER_PAGE_SIZE", "5000")
    monkeypatch.setenv("FAKER_RECORDS", "zero")
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    line = settings_error_line(info.value)
    assert "FAKER_PAGE_SIZE (got '5000')" in line and "FAKER_RECORDS (got 'zero')" in line
    assert "\n" not in line


SECRET_URLS = {
    "user and password": ("http://reader:hunter2@api.example.org/api/v2", "hunter2"),
    "user only": ("https://hunter2@api.example.org/api/v2", "hunter2"),
    "password holding a slash": ("http://reader:hun/ter2@api.example.org/api/v2", "ter2"),
    "query string": ("http://api.example.org/api/v2?token=hunter2", "hunter2"),
    "query after the path's slash": ("http://api.example.org/api/v2/?api_key=hunter2", "hunter2"),
    "fragment": ("http://api.example.org/api/v2#hunter2", "hunter2"),
    "credentials and query": ("http://reader:pw1@api.example.org/api/v2?token=hunter2", "pw1"),
}


@pytest.mark.parametrize(("url", "secret"), SECRET_URLS.values(), ids=SECRET_URLS.keys())
def test_urls_with_credentials_query_or_fragment_are_refused(url: str, secret: str) -> None:
    with pytest.raises(InputError) as info:
        check_api_url(url)
    message = str(info.value)
    assert "api.example.org" in message, message
    for hidden in (secret, "hunter2", "reader", "token"):
        assert hidden not in message, message
    assert "\n" not in message


def test_a_password_holding_a_question_mark_is_withheld_whole() -> None:
    """Which side of the "@" is the secret cannot be told: the host is withheld too."""
    with pytest.raises(InputError, match="credentials") as info:
        check_api_url("http://reader:hun?ter2@api.example.org/api/v2")
    assert "hun" not in str(info.value) and "ter2" not in str(info.value)


def test_the_refusal_says_what_to_do() -> None:
    with pytest.raises(InputError, match=r"credentials .* give the URL without them"):
        check_api_url("http://reader:hunter2@api.example.org/api/v2")
    with pytest.raises(InputError, match=r"query string or fragment: give the base URL"):
        check_api_url("http://api.example.org/api/v2?")


@pytest.mark.parametrize("url", ["http://api.example.org:99999/api/v2", "http://[::1/api/v2"])
def test_urls_python_cannot_take_apart_are_refused_as_input(url: str) -> None:
    with pytest.raises(InputError, match="not an http"):
        check_api_url(url)


def test_a_plain_base_url_is_kept() -> None:
    assert check_api_url(" https://fakerapi.it/api/v2/ ") == "https://fakerapi.it/api/v2"
    assert check_api_url("http://[::1]:8000/api/v2") == "http://[::1]:8000/api/v2"


def test_a_setting_url_with_a_password_is_refused_without_echoing_it(monkeypatch) -> None:
    from pydantic import ValidationError

    from tasks.common.inputs import settings_error_line

    for url in ("htp://reader:hunter2@api.example.org/api/v2", "http://api.example.org/?t=hunter2"):
        monkeypatch.setenv("FAKER_API_URL", url)
        with pytest.raises(ValidationError) as info:
            Settings(_env_file=None)
        line = settings_error_line(info.value)
        assert "FAKER_API_URL" in line and "api.example.org" in line, line
        assert "hunter2" not in line and "reader" not in line, line


def test_run_dates_start_where_the_api_birthdays_start() -> None:
    from tasks.common.inputs import date_range

    assert parse_run_date("1900-01-01", today=TODAY) == dt.date(1900, 1, 1)
    for value in ("1899-12-31", "0001-01-01", dt.date(1899, 12, 31)):
        with pytest.raises(InputError, match="is before 1900-01-01") as info:
            parse_run_date(value, today=TODAY)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="run_date 1899-12-30 is before 1900-01-01"):
        date_range("1899-12-30", "1900-01-02", max_days=10)
    assert date_range("1900-01-01", "1900-01-02", max_days=10)[0] == dt.date(1900, 1, 1)
