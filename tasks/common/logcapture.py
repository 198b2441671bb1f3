"""Keep a run's log lines in memory so the leak scan can read what the run logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

MAX_LINES = 200_000  # a bound, so a chatty run cannot grow memory without limit


class _Collector(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < MAX_LINES:
            try:
                self.lines.append(record.getMessage())
            except Exception:  # a malformed record must not break the run it describes
                self.lines.append(str(record.msg))


@contextmanager
def capture_logs(names: tuple[str, ...] = ("", "prefect")) -> Iterator[list[str]]:
    """Collect every log message emitted under `names` (root and Prefect's own tree)."""
    lines: list[str] = []
    handler = _Collector(lines)
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield lines
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
