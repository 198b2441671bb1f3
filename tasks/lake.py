"""The Parquet lake: one masked raw file per run date, written atomically."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.schemas import RAW_SCHEMA


def partition_dir(lake_dir: Path, zone: str, run_date: dt.date) -> Path:
    """`lake_dir/zone/YYYY/MM/DD`."""
    return lake_dir / zone / f"{run_date:%Y}" / f"{run_date:%m}" / f"{run_date:%d}"


def raw_path(lake_dir: Path, run_date: dt.date) -> Path:
    """Where the run date's masked raw batch lives."""
    return partition_dir(lake_dir, "raw", run_date) / "persons.parquet"


def quarantine_path(lake_dir: Path, run_date: dt.date, name: str = "persons.parquet") -> Path:
    """Where a run date's batch goes when it fails validation."""
    return partition_dir(lake_dir, "quarantine", run_date) / name


class AtomicParquetWriter:
    """Streams tables into a temp file beside the target and renames it into place on success.

    A crash or an exception leaves the previous file (if any) untouched and no partial file
    under the target name: os.replace is atomic within one filesystem.
    """

    def __init__(
        self, target: Path, schema: pa.Schema, metadata: dict[str, str] | None = None
    ) -> None:
        self.target = target
        self.schema = schema.with_metadata({**(schema.metadata or {}), **(metadata or {})})
        self.rows = 0
        target.parent.mkdir(parents=True, exist_ok=True)
        # Temp files left by a killed run are partial files: remove them. Only one run writes a
        # given date at a time (deployment concurrency limit 1), so none of them is live.
        for stale in target.parent.glob(f".{target.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        # A dot-name so readers globbing *.parquet never pick up a half-written file.
        self._tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        """Append a batch (cast to the writer's schema, so drift cannot sneak in)."""
        self._writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def commit(self, target: Path | None = None) -> Path:
        """Close, flush to disk, and move the file into place (or to `target`, e.g. quarantine)."""
        target = target or self.target
        self._writer.close()
        with open(self._tmp, "rb") as handle:
            os.fsync(handle.fileno())
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, target)
        _fsync_dir(target.parent)
        return target

    def abort(self) -> None:
        """Drop the temp file; the previous target file stays as it was."""
        try:
            self._writer.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicParquetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_writer(lake_dir: Path, run_date: dt.date, metadata: dict[str, str]) -> AtomicParquetWriter:
    """An atomic writer for the run date's masked raw batch."""
    return AtomicParquetWriter(raw_path(lake_dir, run_date), RAW_SCHEMA, metadata)


def write_table(table: pa.Table, target: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write one table atomically to `target`."""
    with AtomicParquetWriter(target, table.schema, metadata) as writer:
        writer.write(table)
        return writer.commit()
