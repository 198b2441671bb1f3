"""Fixtures of the task tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tasks.storage.database import connect
from tasks.storage.migrations import migrate


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A migrated DuckDB database under tmp_path, opened as the pipeline opens it."""
    connection = connect(tmp_path / "db" / "faker.duckdb")
    migrate(connection)
    yield connection
    connection.close()
