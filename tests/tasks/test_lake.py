import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.lake import raw_path, raw_writer, write_table

DAY = dt.date(2026, 11, 5)


def test_raw_path_is_partitioned(tmp_path):
    assert raw_path(tmp_path, DAY) == tmp_path / "raw/2026/11/05/persons.parquet"


def small(n, value="a"):
    return pa.table({"x": [value] * n})


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "p/file.parquet"
    write_table(small(3), target, {"k": "v"})
    write_table(small(5, "b"), target)
    assert pq.read_table(target).num_rows == 5
    assert [p.name for p in target.parent.iterdir()] == ["file.parquet"]


def test_failure_keeps_previous_file_and_no_partial(tmp_path):
    target = tmp_path / "file.parquet"
    write_table(small(3), target)
    with pytest.raises(RuntimeError), raw_writer(tmp_path, DAY, {}) as writer:
        raise RuntimeError("boom")
    assert not list((tmp_path / "raw").rglob("*.parquet"))
    assert not list((tmp_path / "raw").rglob("*.tmp"))
    assert pq.read_table(target).num_rows == 3
    del writer


def test_commit_elsewhere_moves_the_file(tmp_path):
    from tasks.lake import AtomicParquetWriter

    writer = AtomicParquetWriter(tmp_path / "a.parquet", small(1).schema, {"m": "1"})
    writer.write(small(2))
    moved = writer.commit(tmp_path / "q/b.parquet")
    assert moved.exists() and not (tmp_path / "a.parquet").exists()
    assert pq.read_schema(moved).metadata[b"m"] == b"1"
