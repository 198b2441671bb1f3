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
    parse_run_date,
)
from tasks.common.run_config import resolve_run_config
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
