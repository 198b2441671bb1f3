"""Great Expectations in a process of its own, so that its import runs beside the run's own.

GX's import is the longest of a run (`start-up: GX s` in bench/results.md; about twice that
where bytecode is not compiled: scipy, altair, sqlalchemy and pandas come with it), and an
import holds the GIL: a warm-up thread can only interleave it with the run's own imports and
set-up, never overlap them. A child process runs it on the other core.
`start()` launches `python -m tasks.quality.validator`, which imports GX, loads both suites and
validates a made-up batch, then serves validations over its pipes: one JSON header line and an
Arrow IPC stream in, one JSON line of counts out (a ValidationSummary, which holds no values).
Given a GX folder, it also stores the counts-only results there and updates its Data Docs site.

The child is only a speed-up. Where it was not started, has ended, or answers anything but a
summary, `validate()` returns None and the caller validates in its own process, as it would
without it (and any error is raised there, as before). The child gets no key, writes nothing to
disk but the GX folder it is given (and its warm-up's temporary site), discards its stderr and
exits when its stdin closes: when this process stops it, exits, or is killed.

This module imports no GX, pandas or Prefect at module level: a CLI process calls `start()`
before its own imports (flows/cli.py, flows/local_demo.py), a worker's flow run process before
the flow module's (flows/user_metrics.py).
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
from contextlib import suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tasks.common.secrets import without_key

if TYPE_CHECKING:
    import pyarrow as pa

    from tasks.quality.gx_validation import ValidationSummary

ROOT = Path(__file__).resolve().parents[2]
# How long a killed validator may take to go.
STOP_SECONDS = 5.0


class Validator:
    """One validator process and the pipes to it; requests are taken one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "tasks.quality.validator"],
            cwd=ROOT,
            env=without_key(os.environ),  # it validates masked batches: no pseudonyms, no key
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int | None:
        """The process id while the process runs."""
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        """Whether the process is still there to take a request."""
        return self._proc is not None and self._proc.poll() is None

    def validate(
        self, layer: str, table: pa.Table, expected_rows: int, gx_dir: Path | None = None
    ) -> ValidationSummary | None:
        """The summary of `table` against the suite of `layer` (Data Docs in `gx_dir`, if given),
        or None if the process cannot give one (then it is stopped, and the caller validates in
        its own process)."""
        import pyarrow as pa

        from tasks.quality.gx_validation import ValidationSummary

        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return None
            assert proc.stdin is not None and proc.stdout is not None
            try:
                header = {
                    "layer": layer,
                    "expected_rows": int(expected_rows),
                    # Resolved here: the process runs in the checkout, not in this cwd.
                    "gx_dir": str(gx_dir.resolve()) if gx_dir is not None else None,
                }
                proc.stdin.write(json.dumps(header).encode() + b"\n")
                with pa.ipc.new_stream(proc.stdin, table.schema) as writer:
                    writer.write_table(table)
                proc.stdin.flush()
                reply: Any = json.loads(proc.stdout.readline() or b"null")
                summary = ValidationSummary.from_dict(reply["summary"])
            except Exception:  # a broken pipe, a closed stream, a failure it answered with
                self._stop_locked()
                return None
            return summary

    def stop(self) -> None:
        """Close its pipes, kill it if it still runs (it holds nothing worth finishing), reap it."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with suppress(OSError):  # the pipe is already broken
                    stream.close()
        # It holds nothing worth finishing (and may be seconds into GX's import): no grace.
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=STOP_SECONDS)


_lock = threading.Lock()
_current: Validator | None = None


def start() -> Validator:
    """The process's validator, started now unless one is already running."""
    global _current
    with _lock:
        if _current is None or not _current.alive():
            if _current is None:
                atexit.register(stop)
            _current = Validator()
        return _current


def validate(
    layer: str, table: pa.Table, expected_rows: int, gx_dir: Path | None = None
) -> ValidationSummary | None:
    """The validator's summary of `table`, or None where no validator can give one."""
    current = _current
    return current.validate(layer, table, expected_rows, gx_dir) if current is not None else None


def stop() -> None:
    """Stop the process's validator, if any."""
    current = _current
    if current is not None:
        current.stop()


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The validator process's loop: warm up, then answer each request until `requests` ends."""
    import pyarrow as pa

    from tasks.quality import gx_validation

    with suppress(Exception):  # a suite GX cannot load: every request then fails the same way
        gx_validation.warm_up()
    while header := requests.readline():
        request = json.loads(header)
        table = pa.ipc.open_stream(requests).read_all()
        try:
            gx_dir = Path(request["gx_dir"]) if request.get("gx_dir") else None
            summary = gx_validation.validate_here(
                table, request["layer"], request["expected_rows"], gx_dir
            )
            reply: dict[str, Any] = {"summary": summary.to_dict()}
        except Exception as exc:  # the caller validates again in its process and raises there
            reply = {"failed": type(exc).__name__}
        del table
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


def main() -> int:
    """`python -m tasks.quality.validator`: serve on stdin and stdout, for `Validator`."""
    # Only the replies go to the real stdout: anything a library prints goes nowhere.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
