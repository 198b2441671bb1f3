"""Task results hand their rows over once, so the futures Prefect keeps do not pin them."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tasks.ingest.fetch import FetchedRange


def test_a_range_hands_its_rows_over_once() -> None:
    fetched = FetchedRange(table=pa.table({"a": [1]}), pages=1, attempts=1, signatures=set())
    assert fetched.take_table().num_rows == 1
    assert fetched.table is None
    with pytest.raises(RuntimeError, match="rows were already handed over"):
        fetched.take_table()
