"""The HMAC key's sources, all read by pydantic-settings into one setting: the environment, `.env`,
a secrets folder (SECRETS_DIR, Docker's /run/secrets) and PII_HASH_KEY_FILE; a bad key is refused
in one line that never holds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tasks.common.secrets as secrets_module
import tasks.common.settings as settings_module
from tasks.common.inputs import InputError
from tasks.common.secrets import (
    MissingKeyError,
    hash_key,
    key_configured,
    resolve_hash_key,
    withhold_key,
)
from tasks.common.settings import Settings, get_settings

ENV_KEY = "env-key-0123456789abcdef"
FOLDER_KEY = "folder-key-0123456789abcdef"
FILE_KEY = "file-key-0123456789abcdef"


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key anywhere: none in the environment, no secrets folder (the session empties it)."""
    for name in ("PII_HASH_KEY", "PII_HASH_KEY_FILE", "PII_HASH_KEY_BLOCK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SECRETS_DIR", "")


def key_file(folder: Path, key: str) -> Path:
    """folder/pii_hash_key holding key, as `openssl rand -hex 32 > file` writes it (a newline)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pii_hash_key"
    path.write_text(key + "\n", encoding="utf-8")
    return path


def key() -> bytes:
    """The key settings read now resolves to."""
    return resolve_hash_key(Settings())


def test_the_key_from_the_environment(no_key: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PII_HASH_KEY", ENV_KEY)
    assert key() == ENV_KEY.encode()


def test_the_key_from_a_secrets_folder(
    no_key: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRETS_DIR", str(key_file(tmp_path / "secrets", FOLDER_KEY).parent))
    assert key() == FOLDER_KEY.encode()
    assert FOLDER_KEY not in repr(Settings()) and FOLDER_KEY not in str(Settings())
    # The environment wins over a file, as pydantic-settings orders its sources.
    monkeypatch.setenv("PII_HASH_KEY", ENV_KEY)
    assert key() == ENV_KEY.encode()


def test_unset_secrets_dir_reads_dockers_folder(
    no_key: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker = key_file(tmp_path / "run-secrets", FOLDER_KEY).parent
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", docker)
    monkeypatch.delenv("SECRETS_DIR")
    assert key() == FOLDER_KEY.encode()
    # The control: an empty SECRETS_DIR reads no folder at all.
    monkeypatch.setenv("SECRETS_DIR", "")
    with pytest.raises(MissingKeyError):
        key()


def test_the_key_from_pii_hash_key_file(
    no_key: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Compose's way: PII_HASH_KEY_FILE=/run/secrets/pii_hash_key; it wins over SECRETS_DIR.
    monkeypatch.setenv("SECRETS_DIR", str(key_file(tmp_path / "secrets", FOLDER_KEY).parent))
    monkeypatch.setenv("PII_HASH_KEY_FILE", str(key_file(tmp_path / "mounted", FILE_KEY)))
    assert key() == FILE_KEY.encode()


def test_an_empty_key_variable_leaves_the_key_to_its_file(
    no_key: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A `.env` copied from .env.example holds `PII_HASH_KEY=`; `make run` names its demo file.
    monkeypatch.setenv("PII_HASH_KEY_FILE", str(key_file(tmp_path / "demo", FILE_KEY)))
    dotenv = tmp_path / ".env"
    dotenv.write_text("PII_HASH_KEY=\n", encoding="utf-8")
    assert resolve_hash_key(Settings(_env_file=dotenv)) == FILE_KEY.encode()
    monkeypatch.setenv("PII_HASH_KEY", "")
    assert key() == FILE_KEY.encode()


@pytest.mark.parametrize("where", ["environment", "file"])
def test_a_short_key_is_refused_in_one_line_without_it(
    where: str, no_key: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = "shortkey-123"
    if where == "environment":
        monkeypatch.setenv("PII_HASH_KEY", short)
    else:
        monkeypatch.setenv("PII_HASH_KEY_FILE", str(key_file(tmp_path, short)))
    with pytest.raises(MissingKeyError) as info:
        key()
    message = str(info.value)
    assert "PII_HASH_KEY" in message and "too short" in message and "16" in message
    assert short not in message and "\n" not in message


def test_no_key_anywhere_says_where_to_put_one(no_key: None) -> None:
    with pytest.raises(MissingKeyError) as info:
        key()
    message = str(info.value)
    for name in ("PII_HASH_KEY", "SECRETS_DIR", "PII_HASH_KEY_FILE", "PII_HASH_KEY_BLOCK"):
        assert name in message
    assert "\n" not in message


def test_a_key_file_of_another_name_is_refused(
    no_key: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "hmac.key"
    other.write_text(FILE_KEY, encoding="utf-8")
    monkeypatch.setenv("PII_HASH_KEY_FILE", str(other))
    with pytest.raises(InputError) as info:
        Settings()
    message = str(info.value)
    assert "PII_HASH_KEY_FILE" in message and "pii_hash_key" in message
    assert FILE_KEY not in message and "\n" not in message


@pytest.fixture
def fresh_key_cache(monkeypatch: pytest.MonkeyPatch):
    """hash_key() and the settings resolved anew, and PSEUDONYM_WORKER_ENV put back, after."""
    monkeypatch.setattr(secrets_module, "PSEUDONYM_WORKER_ENV", {})
    hash_key.cache_clear()
    get_settings.cache_clear()
    yield
    hash_key.cache_clear()
    get_settings.cache_clear()


def test_withhold_key_takes_an_environment_key_out_of_the_environment(
    no_key: None, fresh_key_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PII_HASH_KEY", ENV_KEY)
    withhold_key()
    assert "PII_HASH_KEY" not in os.environ
    assert hash_key() == ENV_KEY.encode()
    assert secrets_module.PSEUDONYM_WORKER_ENV == {"PII_HASH_KEY": ENV_KEY}


def test_withhold_key_with_a_file_key_leaves_no_key_in_the_environment(
    no_key: None, fresh_key_cache: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PII_HASH_KEY_FILE", str(key_file(tmp_path, FILE_KEY)))
    withhold_key()
    assert hash_key() == FILE_KEY.encode()
    assert FILE_KEY not in "".join(os.environ.values())
    assert secrets_module.PSEUDONYM_WORKER_ENV == {}


def test_the_demo_key_is_used_only_where_no_key_is_configured() -> None:
    assert not key_configured({}) and not key_configured({"PII_HASH_KEY": "", "SECRETS_DIR": " "})
    for name in ("PII_HASH_KEY", "PII_HASH_KEY_BLOCK", "PII_HASH_KEY_FILE", "SECRETS_DIR"):
        assert key_configured({name: "x"}), name
