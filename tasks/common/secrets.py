"""The HMAC key behind person_key: the setting PII_HASH_KEY (from the environment, `.env` or a file
secret, all read by pydantic-settings), else a Prefect Secret block."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from tasks.common.errors import PipelineError
from tasks.common.settings import (
    DEFAULT_SECRETS_DIR,
    KEY_FILE_NAME,
    KEY_FILE_VARIABLE,
    SECRETS_DIR_VARIABLE,
    Settings,
)

MIN_KEY_LENGTH = 16
# The variable that holds the key itself; PII_HASH_KEY_BLOCK and _FILE only say where it is.
KEY_ENV = "PII_HASH_KEY"
# Where the setting comes from, for error messages: the settings do not say which source won.
KEY_SETTING_ORIGIN = f"{KEY_ENV} (or its file secret {KEY_FILE_NAME})"
# The key for the processes of a local Dask cluster, which compute pseudonyms: withhold_key()
# fills it and flows/runners.py hands it to the workers as their environment (Dask's Nanny
# `env`), the one place a child process gets the key.
PSEUDONYM_WORKER_ENV: dict[str, str] = {}
# The offline demo's key (`make run`, `make serve`): random, made on first use, git-ignored.
DEMO_KEY_FILE = Path(__file__).resolve().parents[2] / ".secrets" / KEY_FILE_NAME


class MissingKeyError(PipelineError):
    """No usable HMAC key was configured."""


def _checked(raw: str, origin: str) -> bytes:
    key = raw.strip().encode()
    if len(key) < MIN_KEY_LENGTH:
        raise MissingKeyError(
            f"the HMAC key from {origin} is {'empty' if not key else 'too short'}: "
            f"use at least {MIN_KEY_LENGTH} characters (e.g. `openssl rand -hex 32`)"
        )
    return key


def resolve_hash_key(settings: Settings) -> bytes:
    """The pseudonymization key: the PII_HASH_KEY setting, else the Prefect Secret block."""
    if settings.pii_hash_key is not None:
        return _checked(settings.pii_hash_key.get_secret_value(), KEY_SETTING_ORIGIN)
    if settings.pii_hash_key_block:
        from prefect.blocks.system import Secret

        # A sync caller gets the block itself; Prefect types load() as "block or coroutine".
        value = Secret.load(settings.pii_hash_key_block).get()  # type: ignore[union-attr]
        return _checked(str(value), f"Prefect Secret block {settings.pii_hash_key_block!r}")
    raise MissingKeyError(
        f"no HMAC key for person_key: {KEY_ENV} is unset or empty, no file {KEY_FILE_NAME} is in "
        f"{SECRETS_DIR_VARIABLE} (default {DEFAULT_SECRETS_DIR}) or named by {KEY_FILE_VARIABLE}, "
        f"and PII_HASH_KEY_BLOCK names no Prefect Secret block: set one (>= {MIN_KEY_LENGTH} "
        "characters, e.g. `openssl rand -hex 32`); `make run` creates a local demo key for you"
    )


@cache
def hash_key() -> bytes:
    """The HMAC key, resolved once per process (so it is never a task parameter)."""
    from tasks.common.settings import get_settings

    return resolve_hash_key(get_settings())


def key_id(key: bytes) -> str:
    """A short, non-reversible id of the key, stored with each batch so rotations are traceable."""
    return hmac.new(key, b"faker-api-dataflow key id", hashlib.sha256).hexdigest()[:12]


def ensure_demo_key(path: Path) -> Path:
    """The offline demo's key file: made with a random key if missing, always mode 600."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32), encoding="utf-8")
    # A file copied or created by hand may be readable by others: only its owner may read a key.
    path.chmod(0o600)
    return path


def key_configured(env: Mapping[str, str]) -> bool:
    """Whether env names a key or where one is; if not, `make run` and `make serve` use theirs."""
    names = (KEY_ENV, "PII_HASH_KEY_BLOCK", KEY_FILE_VARIABLE, SECRETS_DIR_VARIABLE)
    return any(env.get(name, "").strip() for name in names)


def without_key(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the key or where to find it: for child processes that make no pseudonyms
    (the Prefect server, the local API)."""
    return {name: value for name, value in env.items() if not name.startswith(KEY_ENV)}


def withhold_key() -> None:
    """Resolve the key now, then take it out of this process's environment.

    Every child process inherits the environment, and /proc/<pid>/environ shows it to anyone
    with the same uid: Prefect's temporary server, Chromium (which runs without its sandbox)
    and its crash handlers would all hold the key. hash_key() keeps it in this process's
    memory. Called by processes this project owns (the CLI, a deployment's flow run), never
    when the flow runs inside someone else's Python process, whose environment is theirs.
    """
    hash_key()
    value = os.environ.pop(KEY_ENV, None)
    if value is not None:
        PSEUDONYM_WORKER_ENV[KEY_ENV] = value
