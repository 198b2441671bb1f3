"""Settings: which dotenv file they read, that no test ever reads a developer's `.env`, and that
a bad value is named without echoing a secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError, model_validator

from tasks.common.inputs import settings_error_line
from tasks.common.settings import ENV_FILE_VARIABLE, Settings, env_file, get_settings

ROOT = Path(__file__).resolve().parents[3]
# What a developer's `.env` might hold after `cp .env.example .env`: a key, a throttle, paths.
HOSTILE = {
    "PII_HASH_KEY": "hostile-developer-key-0123456789",
    "REQUESTS_PER_MINUTE": "1",
    "FAKER_RECORDS": "7",
    "RETRY_MAX_ATTEMPTS": "1",
    "DATA_LAKE_DIR": "/hostile/lake",
}
DEFAULTS = {
    "pii_hash_key": None,
    "requests_per_minute": 0,
    "faker_records": 30000,
    "retry_max_attempts": 6,
    "data_lake_dir": "data_lake",
}
READ_HOSTILE = {
    "pii_hash_key": HOSTILE["PII_HASH_KEY"],
    "requests_per_minute": 1,
    "faker_records": 7,
    "retry_max_attempts": 1,
    "data_lake_dir": "/hostile/lake",
}
# Prints the settings a fresh process reads in its working directory.
PRINT_SETTINGS = """
import json
from tasks.common.settings import get_settings
s = get_settings()
key = s.pii_hash_key.get_secret_value() if s.pii_hash_key else None
print(json.dumps({
    "pii_hash_key": key,
    "requests_per_minute": s.requests_per_minute,
    "faker_records": s.faker_records,
    "retry_max_attempts": s.retry_max_attempts,
    "data_lake_dir": str(s.data_lake_dir),
}))
"""


def write_hostile_env(folder: Path) -> Path:
    """A `.env` in folder with every HOSTILE value."""
    path = folder / ".env"
    path.write_text("".join(f"{k}={v}\n" for k, v in HOSTILE.items()), encoding="utf-8")
    return path


def as_dict(settings: Settings) -> dict:
    """The settings HOSTILE would change, in PRINT_SETTINGS's shape."""
    key = settings.pii_hash_key
    return {
        "pii_hash_key": key.get_secret_value() if key is not None else None,
        "requests_per_minute": settings.requests_per_minute,
        "faker_records": settings.faker_records,
        "retry_max_attempts": settings.retry_max_attempts,
        "data_lake_dir": str(settings.data_lake_dir),
    }


def settings_in(cwd: Path, **env: str | None) -> dict:
    """The settings a fresh process started by a test reads in cwd (env: None removes a name)."""
    environ = {k: v for k, v in os.environ.items() if k not in HOSTILE}
    environ["PYTHONPATH"] = str(ROOT)
    for name, value in env.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    done = subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def hostile_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory is a folder with a hostile `.env`; HOSTILE's names are unset."""
    write_hostile_env(tmp_path)
    for name in HOSTILE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_the_test_session_reads_no_env_file() -> None:
    assert os.environ[ENV_FILE_VARIABLE] == ""
    assert env_file() is None


def test_settings_ignore_a_hostile_env_file_under_tests(hostile_cwd: Path) -> None:
    assert as_dict(get_settings()) == DEFAULTS
    assert as_dict(Settings()) == DEFAULTS


def test_the_env_file_is_read_outside_tests(
    hostile_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control: the same folder, as a user's shell has it (variable unset: `.env`).
    monkeypatch.delenv(ENV_FILE_VARIABLE)
    assert env_file() == Path(".env")
    assert as_dict(Settings()) == READ_HOSTILE
    # An explicit `_env_file` still wins over the variable.
    assert as_dict(Settings(_env_file=None)) == DEFAULTS


def test_the_variable_names_another_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HOSTILE:
        monkeypatch.delenv(name, raising=False)
    path = write_hostile_env(tmp_path).rename(tmp_path / "other.env")
    monkeypatch.setenv(ENV_FILE_VARIABLE, str(path))
    assert as_dict(Settings()) == READ_HOSTILE


def test_a_subprocess_started_by_a_test_ignores_a_hostile_env_file(tmp_path: Path) -> None:
    write_hostile_env(tmp_path)
    assert settings_in(tmp_path) == DEFAULTS
    # The control: without the session's setting, the same process reads the file.
    assert settings_in(tmp_path, **{ENV_FILE_VARIABLE: None}) == READ_HOSTILE


def test_the_demo_key_file_is_only_readable_by_its_owner(tmp_path) -> None:
    from tasks.common.secrets import ensure_demo_key

    fresh = ensure_demo_key(tmp_path / "fresh" / "pii_hash_key")
    existing = tmp_path / "existing"
    existing.write_text("an-existing-demo-key-0123456789", encoding="utf-8")
    existing.chmod(0o644)
    assert ensure_demo_key(existing).read_text(encoding="utf-8").startswith("an-existing")
    assert {fresh.stat().st_mode & 0o777, existing.stat().st_mode & 0o777} == {0o600}


class Credentials(BaseModel):
    """Settings-shaped fields whose names say they may hold a secret, and one that does not."""

    service_token: int
    client_secret: int
    db_password: int
    webhook_url: int
    api_key: int
    page_size: int


def test_a_bad_setting_named_like_a_secret_is_never_echoed() -> None:
    values = {
        "service_token": "tok-hunter2",
        "client_secret": "sec-hunter3",
        "db_password": "pw-hunter4",
        "webhook_url": "https://hooks.example.org/services/hunter5",
        "api_key": "key-hunter6",
        "page_size": "many",
    }
    with pytest.raises(ValidationError) as info:
        Credentials(**values)
    line = settings_error_line(info.value)
    for name in ("SERVICE_TOKEN", "CLIENT_SECRET", "DB_PASSWORD", "WEBHOOK_URL", "API_KEY"):
        assert f"{name}: " in line, line
    assert "hunter" not in line and "hooks.example.org" not in line, line
    # The control: a value that cannot be a secret is still shown, so a user sees what they typed.
    assert "PAGE_SIZE (got 'many')" in line
    assert "\n" not in line


class Checked(BaseModel):
    """A model whose own check fails: pydantic's error then holds every value at once."""

    service_token: str

    @model_validator(mode="after")
    def _refuse(self) -> Checked:
        raise ValueError("the combination is not allowed")


def test_a_whole_model_error_echoes_no_value() -> None:
    with pytest.raises(ValidationError) as info:
        Checked(service_token="tok-hunter2")
    line = settings_error_line(info.value)
    assert "not allowed" in line and "hunter2" not in line, line
