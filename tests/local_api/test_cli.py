"""The CLI starts a server as a subprocess and exits cleanly on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from local_api import FaultConfig, LocalApiServer
from local_api.__main__ import build_parser, faults_from_args, main

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    """Poll /health until it answers; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)  # poll interval, not a wait for a condition
    pytest.fail("local_api did not become healthy")


@pytest.mark.slow
def test_cli_serves_and_exits_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "local_api", "--port", str(port), "--quiet", "--fail-first", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"local_api ready at {url}/api/v2"
        params = {"_quantity": 20, "_seed": 4242}
        assert httpx.get(f"{url}/api/v2/persons", params=params).status_code == 500
        served = httpx.get(f"{url}/api/v2/persons", params=params)
        assert served.status_code == 200
        # Another process (fresh hash salt) must produce the same bytes for the same seed.
        with LocalApiServer(port=0) as local:
            assert httpx.get(f"{local.base_url}/persons", params=params).content == served.content
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_parses_fault_flags() -> None:
    args = build_parser().parse_args(
        ["--rate-limit", "30", "--retry-after", "http-date", "--error-statuses", "500,502",
         "--drift", "county_code,missing-email", "--drift", "extra-field", "--down"]
    )  # fmt: skip
    faults = faults_from_args(args)
    assert faults.rate_limit == 30 and faults.retry_after == "http-date"
    assert faults.error_statuses == (500, 502)
    assert faults.drift == ("county_code", "missing-email", "extra-field")
    assert faults.down


def test_cli_parses_hostile_response_flags() -> None:
    args = build_parser().parse_args(
        ["--redirect-rate", "0.5", "--redirect-status", "308", "--gzip-bomb-rate", "1",
         "--gzip-bomb-bytes", "67108864", "--deep-json-rate", "0.25", "--deep-json-levels", "2000"]
    )  # fmt: skip
    faults = faults_from_args(args)
    assert (faults.redirect_rate, faults.redirect_status) == (0.5, 308)
    assert (faults.gzip_bomb_rate, faults.gzip_bomb_bytes) == (1.0, 64 << 20)
    assert (faults.deep_json_rate, faults.deep_json_levels) == (0.25, 2000)
    defaults = faults_from_args(build_parser().parse_args([]))
    assert defaults == FaultConfig()  # every flag's default is the config's


def test_cli_parses_slow_body_flags() -> None:
    args = build_parser().parse_args(
        ["--slow-body-rate", "0.5", "--slow-body-first", "1", "--slow-body-seconds", "2"]
    )
    faults = faults_from_args(args)
    assert (faults.slow_body_rate, faults.slow_body_first, faults.slow_body_seconds) == (0.5, 1, 2)


def test_cli_parses_hostile_source_flags() -> None:
    message = "write to jane.doe@example.com or call +1 202 555 0143"
    args = build_parser().parse_args(
        ["--drift", "email-in-country", "--drift", "int_coordinates,email-keys",
         "--error-message", message]
    )  # fmt: skip
    faults = faults_from_args(args)
    assert faults.drift == ("email-in-country", "int-coordinates", "email-keys")
    assert faults.error_message == message
    assert faults_from_args(build_parser().parse_args([])).error_message is None


@pytest.mark.parametrize(
    "argv", [["--drift", "bogus"], ["--error-rate", "2"], ["--error-statuses", "x"]]
)
def test_cli_rejects_bad_flags(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
