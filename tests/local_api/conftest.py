"""Fixtures: real local API servers on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from local_api import FaultConfig, LocalApiServer


@pytest.fixture(scope="module")
def server() -> Iterator[LocalApiServer]:
    """A fault-free server shared by a test module."""
    with LocalApiServer(port=0) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: LocalApiServer) -> Iterator[httpx.Client]:
    """Keep-alive client against the shared server's v2 base URL."""
    with httpx.Client(base_url=server.base_url, timeout=10) as c:
        yield c


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    """Shared client without a base URL; reusing it avoids a TLS context per request."""
    with httpx.Client(timeout=10) as c:
        yield c


@pytest.fixture
def start_server() -> Iterator[Callable[..., LocalApiServer]]:
    """Factory starting a server with the given fault settings; stopped after the test."""
    started: list[LocalApiServer] = []

    def _start(**faults: object) -> LocalApiServer:
        srv = LocalApiServer(port=0, faults=FaultConfig(**faults)).start()  # type: ignore[arg-type]
        started.append(srv)
        return srv

    yield _start
    for srv in started:
        srv.stop()
