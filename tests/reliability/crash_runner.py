"""Run the pipeline CLI in this process with one drill hook: stop, crash or fail at one point.

Usage: python tests/reliability/crash_runner.py STAGE MARKER [RELEASE] -- CLI ARGS...

STAGE is where the hook acts. On reaching it the runner writes MARKER (so the test waits on a
condition, never a fixed sleep), then blocks forever (the test SIGKILLs it there), waits for the
file RELEASE, or raises, as listed:

  lake-write          block after the first batch is written to the staged lake file
  duckdb-load         block inside the DuckDB transaction, after the date's rows were staged
  hold-load           like duckdb-load, but carry on once RELEASE exists (holds the DB lock)
  mark-connect        mark the first time the run asks for the DuckDB file (the lock), carry on
  lock-load           before the run opens DuckDB to stage its batch, wait for RELEASE (the test
                      takes the DuckDB lock meanwhile)
  db-committed        block after the DuckDB commit, before any staged file is renamed
  between-renames     block after the raw lake file's rename, before the extract's
  before-publish      block after the commit, before the first artifact is created
  mid-publish         block after the first artifact was created
  raise-privacy       raise in the privacy step
  raise-reports       raise in the report step
  raise-publish       raise while creating the second artifact (the first one exists)
  skip-vocabulary     let every value through the vocabulary check (a gap in it), so only the
                      leak scan stands between a hostile source and the outputs

Raised errors carry PLANTED, a made-up e-mail address and phone number: the test checks they
reach no output.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

PLANTED = "boom for planted.person@example.org at +14155550123"


def _block_forever() -> None:
    threading.Event().wait()


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.02)


def _raise(*_: Any, **__: Any) -> Any:
    raise RuntimeError(PLANTED)


def _on_call(owner: Any, name: str, nth: int, act: Any) -> None:
    """Replace `owner.name` so its `nth` call (1-based) runs `act(self)` first."""
    original = getattr(owner, name)
    calls = {"n": 0}

    def hooked(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == nth:
            act(*args)
        return original(*args, **kwargs)

    setattr(owner, name, hooked)


def _install(hook: str, marker: Path, release: Path | None) -> None:
    import flows.steps
    import tasks.ingest.ranges
    import tasks.privacy.extract
    import tasks.reporting.artifacts
    import tasks.reporting.compose
    import tasks.storage.batches
    import tasks.storage.database
    import tasks.storage.lake

    def mark_and_block(*_: Any) -> None:
        marker.write_text(hook)
        _block_forever()

    def mark_and_wait(*_: Any) -> None:
        marker.write_text(hook)
        assert release is not None
        _wait_for(release)

    if hook == "lake-write":
        write = tasks.storage.lake.AtomicParquetWriter.write

        def write_then_block(self: Any, table: Any) -> None:
            write(self, table)
            marker.write_text(str(self.temp))
            _block_forever()

        tasks.storage.lake.AtomicParquetWriter.write = write_then_block
    elif hook in ("duckdb-load", "hold-load"):
        store_reports = tasks.storage.batches.store_reports

        def store_then_stop(con: Any, *args: Any, **kwargs: Any) -> None:
            store_reports(con, *args, **kwargs)
            marker.write_text("in load transaction")
            if hook == "duckdb-load":
                _block_forever()
            assert release is not None
            _wait_for(release)

        tasks.storage.batches.store_reports = store_then_stop
    elif hook == "mark-connect":
        # open_db is where a run queues for the DuckDB file lock; mark the first attempt.
        open_db = tasks.storage.database.open_db

        def marked_open_db(*args: Any, **kwargs: Any) -> Any:
            if not marker.exists():
                marker.write_text("asking for the DuckDB lock")
            return open_db(*args, **kwargs)

        tasks.storage.database.open_db = marked_open_db
        for name, module in list(sys.modules.items()):
            if (
                name.startswith(("flows.", "tasks."))
                and getattr(module, "open_db", None) is open_db
            ):
                module.open_db = marked_open_db
    elif hook == "lock-load":
        _on_call(flows.steps, "open_transaction", 1, mark_and_wait)
    elif hook == "db-committed":
        _on_call(tasks.storage.lake.AtomicParquetWriter, "commit", 1, mark_and_block)
    elif hook == "between-renames":
        _on_call(tasks.storage.lake.AtomicParquetWriter, "commit", 2, mark_and_block)
    elif hook == "before-publish":
        _on_call(tasks.reporting.artifacts.Artifact, "create", 1, mark_and_block)
    elif hook == "mid-publish":
        _on_call(tasks.reporting.artifacts.Artifact, "create", 2, mark_and_block)
    elif hook == "raise-privacy":
        tasks.privacy.extract.shareable_extract = _raise
    elif hook == "raise-reports":
        tasks.reporting.compose.build_charts = _raise
    elif hook == "raise-publish":
        _on_call(tasks.reporting.artifacts.Artifact, "create", 2, _raise)
    elif hook == "skip-vocabulary":
        tasks.ingest.ranges.check_vocabulary = lambda *_: None
    else:
        raise SystemExit(f"unknown hook {hook!r}")


def main(argv: list[str]) -> int:
    """Install the drill hook, then run the real CLI."""
    split = argv.index("--")
    head, cli_args = argv[:split], argv[split + 1 :]
    hook, marker = head[0], Path(head[1])
    release = Path(head[2]) if len(head) > 2 else None
    import flows.cli
    import flows.user_metrics  # import first, so the hooks also replace names it imported

    _install(hook, marker, release)
    return flows.cli.main(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
