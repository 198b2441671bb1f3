"""The Parquet lake: one masked raw file per run date, staged beside its target, then renamed."""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.common.schemas import MASKED_COLUMNS, RAW_SCHEMA

# Columns every row of a masked batch holds the same value in: sorting need not move them.
_CONSTANT = frozenset({*MASKED_COLUMNS, "run_date"})


def in_key_order(table: pa.Table) -> pa.Table:
    """The masked batch sorted by person_key: the lake keeps no trace of the source's order (or
    of the seeded page a row came from). Only the varying columns are reordered; the constant
    ones are reused as they are, which at a million rows saves copying about half the batch
    (and its peak memory). Should a masked column ever vary, validation refuses the batch: the
    suite requires every one of them to be exactly the mask."""
    order = pc.sort_indices(table["person_key"])
    columns = [
        column if name in _CONSTANT else column.take(order)
        for name, column in zip(table.column_names, table.columns, strict=True)
    ]
    return pa.Table.from_arrays(columns, schema=table.schema)


def partition_dir(lake_dir: Path, zone: str, run_date: dt.date) -> Path:
    """`lake_dir/zone/YYYY/MM/DD`."""
    return lake_dir / zone / f"{run_date:%Y}" / f"{run_date:%m}" / f"{run_date:%d}"


def raw_path(lake_dir: Path, run_date: dt.date) -> Path:
    """Where the run date's masked raw batch lives."""
    return partition_dir(lake_dir, "raw", run_date) / "persons.parquet"


def quarantine_path(lake_dir: Path, run_date: dt.date) -> Path:
    """Where a run date's batch goes when it fails validation."""
    return partition_dir(lake_dir, "quarantine", run_date) / "persons.parquet"


# A staged file is `.<target name>.<owner>.tmp` beside its target: a dot-name, so readers globbing
# *.parquet never pick it up, and the owner (the flow run id) so a later check can tell a file a
# live run is writing from one a dead run left, and roll a committed one forward.
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<owner>[0-9A-Za-z_-]+)\.tmp$")


def temp_path(target: Path, owner: str) -> Path:
    """Where `owner` stages `target`."""
    return target.with_name(f".{target.name}.{owner}.tmp")


def temp_files(lake_dir: Path) -> list[Path]:
    """Every staged (temp) file in the lake, whoever wrote it."""
    lake_dir = Path(lake_dir)
    return sorted(p for p in lake_dir.rglob(".*.tmp") if TEMP_NAME.match(p.name))


def temp_owner(path: Path) -> tuple[Path, str] | None:
    """(target, owner) of a staged file, or None if the name is not one of ours."""
    match = TEMP_NAME.match(path.name)
    return (path.with_name(match["target"]), match["owner"]) if match else None


class AtomicParquetWriter:
    """Stages a Parquet file beside its target and renames it into place on commit.

    Until `commit`, the target (if any) is the previous file and no reader sees the new one:
    `finish` makes the staged file complete and durable, so it can be verified first. A crash
    or an exception leaves the previous file untouched: os.replace is atomic within one
    filesystem, and `abort` (or the next run's check) removes the staged file.
    """

    def __init__(
        self,
        target: Path,
        schema: pa.Schema,
        metadata: dict[str, str] | None = None,
        owner: str | None = None,
    ) -> None:
        self.target = target
        self.schema = schema.with_metadata({**(schema.metadata or {}), **(metadata or {})})
        self.rows = 0
        # Set once DuckDB committed the batch: the staged file then stays for recovery to roll
        # forward, whatever happens before its rename.
        self.keep = False
        target.parent.mkdir(parents=True, exist_ok=True)
        self.temp = temp_path(target, owner or uuid.uuid4().hex)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self.temp, self.schema, compression="zstd"
        )

    def write(self, table: pa.Table) -> None:
        """Append a batch (cast to the writer's schema, so drift cannot sneak in)."""
        if self._writer is None:
            raise RuntimeError(f"{self.temp.name} is already finished")
        self._writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def finish(self) -> Path:
        """Close the staged file and flush it to disk; still invisible to readers. Idempotent."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            with open(self.temp, "rb") as handle:
                os.fsync(handle.fileno())
        return self.temp

    def commit(self) -> Path:
        """Finish, then move the staged file into place (atomic) and make the rename durable."""
        self.finish()
        os.replace(self.temp, self.target)
        fsync_dir(self.target.parent)
        return self.target

    def abort(self) -> None:
        """Drop the staged file; the previous target file stays as it was."""
        try:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        finally:
            self.temp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicParquetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Not committed by the time the block ends (an exception, or a check that failed):
        # nothing of it may stay on disk.
        if not self.keep and (self.temp.exists() or self._writer is not None):
            self.abort()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_writer(
    lake_dir: Path, run_date: dt.date, metadata: dict[str, str], owner: str | None = None
) -> AtomicParquetWriter:
    """A staging writer for the run date's masked raw batch."""
    return AtomicParquetWriter(raw_path(lake_dir, run_date), RAW_SCHEMA, metadata, owner)


def file_run_id(path: Path) -> str | None:
    """The flow run id a lake file was committed by (Parquet metadata), None if it has none."""
    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(b"flow_run_id")
    return value.decode() if value else None


def write_table(table: pa.Table, target: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write one table atomically to `target`."""
    with AtomicParquetWriter(target, table.schema, metadata) as writer:
        writer.write(table)
        return writer.commit()


def shareable_path(lake_dir: Path, run_date: dt.date) -> Path:
    """Where the run date's shareable extract lives in the lake."""
    return partition_dir(Path(lake_dir), "shareable", run_date) / "persons.parquet"


def shareable_writer(
    table: pa.Table,
    lake_dir: Path,
    run_date: dt.date,
    metadata: dict[str, str] | None = None,
    owner: str | None = None,
) -> AtomicParquetWriter:
    """The extract written to a staged file for data_lake/shareable/YYYY/MM/DD/persons.parquet."""
    if "person_key" in table.column_names:
        raise ValueError("the shareable extract must not carry person_key")
    writer = AtomicParquetWriter(shareable_path(lake_dir, run_date), table.schema, metadata, owner)
    try:
        writer.write(table)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return writer
