import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.storage.lake import (
    AtomicParquetWriter,
    file_run_id,
    raw_path,
    raw_writer,
    temp_files,
    temp_owner,
    write_table,
)

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


def test_a_finished_file_stays_staged_until_commit(tmp_path):
    target = tmp_path / "file.parquet"
    write_table(small(3), target)
    writer = AtomicParquetWriter(target, small(1).schema, {"flow_run_id": "run-7"}, owner="run-7")
    writer.write(small(2))
    staged = writer.finish()
    # Complete and durable, named after its owner, and invisible to readers of the target.
    assert staged == target.with_name(".file.parquet.run-7.tmp")
    assert pq.read_table(staged).num_rows == 2 and pq.read_table(target).num_rows == 3
    assert temp_files(tmp_path) == [staged] and temp_owner(staged) == (target, "run-7")
    assert writer.commit() == target
    assert pq.read_table(target).num_rows == 2 and file_run_id(target) == "run-7"
    assert temp_files(tmp_path) == []


def test_a_kept_file_survives_a_failure_before_its_rename(tmp_path):
    # Once DuckDB committed the batch, the staged file is the batch: recovery rolls it forward.
    target = tmp_path / "file.parquet"
    with pytest.raises(RuntimeError), AtomicParquetWriter(target, small(1).schema) as writer:
        writer.write(small(1))
        writer.finish()
        writer.keep = True
        raise RuntimeError("crash between the DuckDB commit and the rename")
    assert temp_files(tmp_path) == [writer.temp] and not target.exists()


def test_an_unfinished_writer_is_aborted(tmp_path):
    target = tmp_path / "file.parquet"
    with pytest.raises(RuntimeError), AtomicParquetWriter(target, small(1).schema) as writer:
        writer.write(small(1))
        writer.finish()
        raise RuntimeError("a check failed before the commit")
    assert temp_files(tmp_path) == [] and not target.exists()


def test_in_key_order_sorts_whole_rows_by_person_key():
    from tasks.common.schemas import MASK, MASKED_COLUMNS, RAW_SCHEMA
    from tasks.storage.lake import in_key_order

    keys = [f"{(i * 7919) % 101:064x}" for i in range(101)]  # a shuffled order
    rows = [
        {
            **dict.fromkeys(MASKED_COLUMNS, MASK),
            "person_key": key,
            "run_date": dt.date(2026, 10, 1),
            "email": f"{MASK}@d{i}.example",
            "age": i,
            "gender": ("female", "male")[i % 2],
            "country": f"Country {i}",
            "country_code": f"C{i % 10}",
        }
        for i, key in enumerate(keys)
    ]
    # In chunks, as the ranges arrive.
    table = pa.concat_tables(
        [pa.Table.from_pylist(rows[i : i + 30], schema=RAW_SCHEMA) for i in range(0, 101, 30)]
    )
    ordered = in_key_order(table)
    assert ordered.schema == RAW_SCHEMA
    assert ordered["person_key"].to_pylist() == sorted(keys)
    # Each row keeps its own values: the same rows, only in another order.
    as_rows = ordered.to_pylist()
    assert sorted(as_rows, key=lambda r: r["age"]) == rows
