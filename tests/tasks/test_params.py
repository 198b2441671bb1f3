import datetime as dt
import socket

import pytest

from tasks.params import (
    InputError,
    check_api_url,
    check_page_size,
    check_reachable,
    check_records,
    parse_run_date,
)
from tasks.run_config import resolve_run_config
from tasks.settings import Settings

TODAY = dt.date(2026, 11, 25)


@pytest.mark.parametrize("value", [0, -1, 10_000_001])
def test_records_out_of_range(value):
    with pytest.raises(InputError, match=f"records={value}"):
        check_records(value)


@pytest.mark.parametrize("value", [0, 1001, -3])
def test_page_size_out_of_range(value):
    with pytest.raises(InputError, match=f"page_size={value}"):
        check_page_size(value)


@pytest.mark.parametrize("value", ["2026-13-01", "25/11/2026", "yesterday", "2026-1-5", ""])
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
    cfg = resolve_run_config(settings, records=2500, page_size=100, run_date="2026-01-02", seed=9)
    assert (cfg.records, cfg.page_size, cfg.run_seed) == (2500, 100, 9)
    assert cfg.api_url == "http://127.0.0.1:1/api/v2"
    assert cfg.run_date == dt.date(2026, 1, 2)
    with pytest.raises(InputError, match="seed=0"):
        resolve_run_config(settings, seed=0)


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
