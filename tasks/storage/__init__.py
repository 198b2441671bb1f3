"""Storage: the Parquet lake (staged files renamed at the commit), the DuckDB file under its lock,
migrations, a date's batch, the pipeline_runs rows, and recovery from killed runs."""

from tasks.storage.batches import stage_batch_task
from tasks.storage.database import DatabaseBusyError, open_db, utc_now
from tasks.storage.lake import AtomicParquetWriter, in_key_order, quarantine_path, raw_writer
from tasks.storage.runs import (
    finish_run,
    kept_columns,
    publishes_latest,
    read_back,
    record_end,
    record_start,
    run_columns,
)

__all__ = [
    "AtomicParquetWriter",
    "DatabaseBusyError",
    "finish_run",
    "in_key_order",
    "kept_columns",
    "open_db",
    "publishes_latest",
    "quarantine_path",
    "raw_writer",
    "read_back",
    "record_end",
    "record_start",
    "run_columns",
    "stage_batch_task",
    "utc_now",
]
