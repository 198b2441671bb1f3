"""Run the pipeline CLI in this process, stopping at one stage so a test can SIGKILL or release it.

Usage: python tests/reliability/crash_runner.py STAGE MARKER [RELEASE] -- CLI ARGS...

STAGE is where to stop:
  lake-write    after the first batch is written to the lake's temp file
  duckdb-load   inside the load transaction, after the date's rows were deleted and re-inserted
  hold-load     like duckdb-load, but carry on once the file RELEASE exists (holds the DB lock)
  mark-connect  just before the run first asks for the DuckDB file (the lock), then carry on

On reaching the stage it writes MARKER (so the test waits on a condition, never a fixed sleep)
and, for the first two, blocks forever: the test kills the process there.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any


def _block_forever() -> None:
    threading.Event().wait()


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.02)


def _install(stage: str, marker: Path, release: Path | None) -> None:
    import tasks.lake
    import tasks.load

    if stage == "lake-write":
        write = tasks.lake.AtomicParquetWriter.write

        def write_then_block(self: Any, table: Any) -> None:
            write(self, table)
            marker.write_text(str(self._tmp))
            _block_forever()

        tasks.lake.AtomicParquetWriter.write = write_then_block
    elif stage in ("duckdb-load", "hold-load"):
        store_reports = tasks.load.store_reports

        def store_then_stop(con: Any, *args: Any, **kwargs: Any) -> None:
            store_reports(con, *args, **kwargs)
            marker.write_text("in load transaction")
            if stage == "duckdb-load":
                _block_forever()
            assert release is not None
            _wait_for(release)

        tasks.load.store_reports = store_then_stop
    elif stage == "mark-connect":
        # open_db is where a run queues for the DuckDB file lock; mark the first attempt.
        open_db = tasks.load.open_db

        def marked_open_db(*args: Any, **kwargs: Any) -> Any:
            if not marker.exists():
                marker.write_text("asking for the DuckDB lock")
            return open_db(*args, **kwargs)

        tasks.load.open_db = marked_open_db
        for name, module in list(sys.modules.items()):
            if (
                name.startswith(("flows.", "tasks."))
                and getattr(module, "open_db", None) is open_db
            ):
                module.open_db = marked_open_db
    else:
        raise SystemExit(f"unknown stage {stage!r}")


def main(argv: list[str]) -> int:
    """Install the stage hook, then run the real CLI."""
    split = argv.index("--")
    head, cli_args = argv[:split], argv[split + 1 :]
    stage, marker = head[0], Path(head[1])
    release = Path(head[2]) if len(head) > 2 else None
    import flows.user_metrics  # import first, so the hooks also replace names it imported

    _install(stage, marker, release)
    return flows.user_metrics.main(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
